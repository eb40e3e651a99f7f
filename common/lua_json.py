"""Lua expressions that build a msgspec Struct's JSON, byte for byte as msgspec encodes it.

Redis scripts publish and store frames (messages, presence, group events, control
messages between gateways) without a round trip to Python.  Rather than spell the
JSON out again in Lua, each script asks :func:`json_expr` for the expression that
builds it from the Struct in ``protocol/``: the field names, their order and the
tag come from that one definition, and a unit test checks the bytes match
``msgspec.json.encode`` (tests/unit/test_lua_json.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec


@dataclass(frozen=True, slots=True)
class Text:
    """A JSON string whose characters are the Lua expression ``expr``: only for text that needs
    no JSON escaping (validated names, keys, ids, token hashes, fixed words)."""

    expr: str


@dataclass(frozen=True, slots=True)
class Raw:
    """The Lua expression ``expr`` already is JSON (a value encoded in Python, or another frame)."""

    expr: str


@dataclass(frozen=True, slots=True)
class IfSet:
    """Like ``value``, but the field is left out when ``value.expr`` is ``''`` at run time
    (as msgspec leaves out a field at its default with ``omit_defaults``)."""

    value: Text | Raw


@dataclass(frozen=True, slots=True)
class Const:
    """A value known when the script is built (a fixed word, ``true``)."""

    value: object


Value = Text | Raw | IfSet | Const


def json_expr(cls: type[msgspec.Struct], **fields: Value) -> str:
    """The Lua expression building ``cls(**fields)`` as JSON; ``fields`` use the Python field names."""
    config = cls.__struct_config__
    pieces: list[tuple[bool, str]] = []  # (is a literal, text)
    literal = "{"
    first = True
    if isinstance(config.tag_field, str):
        literal += f"{_json(config.tag_field)}:{_json(config.tag)}"
        first = False
    unknown = set(fields) - set(cls.__struct_fields__)
    assert not unknown, f"{cls.__name__} has no field(s) {unknown}"
    for name, wire in zip(cls.__struct_fields__, cls.__struct_encode_fields__, strict=True):
        if name not in fields:
            continue
        value = fields[name]
        head = ("" if first else ",") + f"{_json(wire)}:"
        if isinstance(value, IfSet):
            assert not first, "a field that may be left out cannot come first"
            inner = _value_expr(value.value)
            pieces.append((True, literal))
            literal = ""
            pieces.append((False, f"({value.value.expr} ~= '' and ({_lua_string(head)} .. {inner}) or '')"))
            continue
        first = False
        if isinstance(value, Const):
            literal += head + _json(value.value)
        elif isinstance(value, Text):
            literal += head + '"'
            pieces.append((True, literal))
            pieces.append((False, value.expr))
            literal = '"'
        else:
            literal += head
            pieces.append((True, literal))
            pieces.append((False, value.expr))
            literal = ""
    pieces.append((True, literal + "}"))
    return " .. ".join(_lua_string(text) if is_literal else text for is_literal, text in pieces if text)


def _value_expr(value: Text | Raw) -> str:
    return f"'\"' .. {value.expr} .. '\"'" if isinstance(value, Text) else value.expr


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
