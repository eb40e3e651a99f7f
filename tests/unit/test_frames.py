"""Wire frames (protocol/frames.py): parsing client frames, encoding, decoding server frames.

Pure and synchronous: no sockets, no Redis.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol import frames as f
from protocol.errors import ChatError, ErrorCode
from protocol.frames import (
    CLIENT_TYPES,
    MAX_HISTORY_LIMIT,
    MAX_PASSWORD_CHARS,
    MAX_REF_CHARS,
    PROTOCOL_VERSION,
    FrameParser,
    Limits,
)


def _j(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _send(**fields: object) -> str:
    return _j({"type": "send", **fields})


def _parse(raw: str | bytes, limits: Limits | None = None) -> f.ClientFrame:
    return FrameParser(limits).parse(raw)


def _error(raw: str | bytes, limits: Limits | None = None) -> ChatError:
    with pytest.raises(ChatError) as info:
        _parse(raw, limits)
    return info.value


AS = pytest.mark.parametrize("as_bytes", [False, True], ids=["text", "bytes"])


def _as(raw: str | bytes, as_bytes: bool) -> str | bytes:
    if as_bytes and isinstance(raw, str):
        return raw.encode("utf-8")
    return raw


# -- valid frames ------------------------------------------------------------------------

VALID: list[Any] = [
    pytest.param(_j({"type": "login", "v": 1, "user": "alice", "password": "pw"}),
                 f.Login(v=1, user="alice", password="pw"), id="login"),
    pytest.param(_j({"type": "login", "v": 1, "user": "\uff21lice", "password": "p" * MAX_PASSWORD_CHARS, "ref": "L"}),
                 f.Login(v=1, user="\uff21lice", password="p" * MAX_PASSWORD_CHARS, ref="L"),
                 id="login-fullwidth-name-longest-password"),
    *(pytest.param(_j({"type": "login", "v": 1, "user": "a", "password": "p", "presence": mode}),
                   f.Login(v=1, user="a", password="p", presence=mode), id=f"login-presence-{mode}")
      for mode in ("each", "batched", "off")),
    pytest.param(_send(to="@bob", body="hi"), f.Send(to="@bob", body="hi"), id="send-dm"),
    pytest.param(_send(to="*", body="hello all", ref="r1"), f.Send(to="*", body="hello all", ref="r1"),
                 id="send-broadcast"),
    pytest.param(_send(to="@Bob", body="line1\nline2 \"q\" \\ \u00e9\U0001f600\x00"),
                 f.Send(to="@Bob", body="line1\nline2 \"q\" \\ \u00e9\U0001f600\x00"), id="send-any-body-text"),
    pytest.param(_send(to="@bob", body="x" * 8000), f.Send(to="@bob", body="x" * 8000), id="send-body-at-limit"),
    pytest.param(_send(to="@bob", body="\u00e9" * 8000), f.Send(to="@bob", body="\u00e9" * 8000),
                 id="send-body-limit-in-chars-not-bytes"),
    pytest.param(_send(to="@\uff42ob", body="hi"), f.Send(to="@\uff42ob", body="hi"), id="send-to-fullwidth"),
    pytest.param(_j({"type": "who"}), f.Who(), id="who"),
    pytest.param(_j({"type": "who", "ref": "w"}), f.Who(ref="w"), id="who-ref"),
    pytest.param(_j({"type": "who", "ref": None}), f.Who(), id="who-ref-null"),
    pytest.param(_j({"type": "who", "cursor": "bob", "limit": 50, "ref": "w"}), f.Who(cursor="bob", limit=50, ref="w"),
                 id="who-page"),
    pytest.param(_j({"type": "who", "cursor": None, "limit": None}), f.Who(), id="who-page-nulls"),
    pytest.param(_j({"type": "who", "limit": 10**6}), f.Who(limit=10**6), id="who-big-limit"),  # server caps it
    pytest.param(_j({"type": "history", "conv": "*"}), f.HistoryRequest(conv="*"), id="history-defaults"),
    pytest.param(_j({"type": "history", "conv": "@bob", "before": "1700000000000-3", "limit": 1, "ref": "h"}),
                 f.HistoryRequest(conv="@bob", before="1700000000000-3", limit=1, ref="h"), id="history-all-fields"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": MAX_HISTORY_LIMIT, "before": None}),
                 f.HistoryRequest(conv="*", limit=MAX_HISTORY_LIMIT), id="history-max-limit"),
    pytest.param(_j({"type": "ping"}), f.Ping(), id="ping"),
    pytest.param(_send(to="#devs", body="hi group"), f.Send(to="#devs", body="hi group"), id="send-group"),
    pytest.param(_j({"type": "group", "op": "create", "group": "devs", "invite_only": True, "ref": "g"}),
                 f.Group(op="create", group="devs", invite_only=True, ref="g"), id="group-create"),
    pytest.param(_j({"type": "group", "op": "invite", "group": "#devs", "user": "@bob"}),
                 f.Group(op="invite", group="#devs", user="@bob"), id="group-invite"),
    pytest.param(_j({"type": "groups"}), f.Groups(), id="groups"),
    pytest.param(_j({"type": "upload", "name": "cat.png", "size": 5, "mime": "image/png", "sha256": "a" * 64,
                     "ref": "u1"}),
                 f.Upload(name="cat.png", size=5, mime="image/png", sha256="a" * 64, ref="u1"), id="upload"),
    pytest.param(_j({"type": "ping", "ref": ""}), f.Ping(ref=""), id="ping-empty-ref"),
    pytest.param(_j({"type": "ping", "ref": "r" * MAX_REF_CHARS}), f.Ping(ref="r" * MAX_REF_CHARS),
                 id="ping-longest-ref"),
    pytest.param(' \n\t{"ref":"z","type":"ping"}\r\n ', f.Ping(ref="z"), id="whitespace-and-type-last"),
]


@AS
@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_frames_parse_to_their_type(raw: str, expected: f.ClientFrame, as_bytes: bool) -> None:
    frame = _parse(_as(raw, as_bytes))
    assert type(frame) is type(expected)
    assert frame == expected


def test_every_client_type_is_covered_by_the_valid_table() -> None:
    assert {json.loads(p.values[0])["type"] for p in VALID} == CLIENT_TYPES


def test_history_defaults() -> None:
    frame = _parse('{"type":"history","conv":"*"}')
    assert isinstance(frame, f.HistoryRequest)
    assert (frame.before, frame.limit, frame.ref) == (None, 50, None)


@pytest.mark.parametrize(
    "frame",
    [
        f.Login(v=PROTOCOL_VERSION, user="alice", password="secret", ref="1"),
        f.Send(to="@bob", body="hi \u00e9\U0001f600"),
        f.Send(to="*", body="all", ref="2"),
        f.Who(),
        f.Who(ref="3"),
        f.Who(cursor="名前", limit=2, ref="3"),
        f.HistoryRequest(conv="@bob", before="5-1", limit=7, ref="4"),
        f.HistoryRequest(conv="*"),
        f.Ping(),
        f.Ping(ref="5"),
    ],
    ids=lambda fr: type(fr).__name__,
)
def test_client_frames_round_trip_through_encode(frame: f.ClientFrame) -> None:
    wire = f.encode(frame)
    assert json.loads(wire)["type"] in CLIENT_TYPES
    assert _parse(wire) == frame
    assert _parse(wire.decode()) == frame


def test_encode_omits_defaults() -> None:
    assert f.encode(f.Ping()) == b'{"type":"ping"}'
    assert f.encode(f.HistoryRequest(conv="*")) == b'{"type":"history","conv":"*"}'
    assert f.encode(f.Ack(id="1-0", ts=1)) == b'{"type":"ack","id":"1-0","ts":1}'


# -- bad frames --------------------------------------------------------------------------

INVALID, UNKNOWN, VERSION, LARGE, USERNAME = (
    "invalid_frame",
    "unknown_type",
    "unsupported_version",
    "too_large",
    "invalid_username",
)

BAD: list[Any] = [
    # not JSON, or not a JSON object
    pytest.param("", INVALID, None, id="empty"),
    pytest.param("   ", INVALID, None, id="blank"),
    pytest.param('{"type":"ping"', INVALID, None, id="truncated"),
    pytest.param("{'type':'ping'}", INVALID, None, id="single-quotes"),
    pytest.param('{"type":"ping","ref":"a"} {}', INVALID, None, id="trailing-data"),
    pytest.param('{"type":"ping","ref":"a"}\x00', INVALID, None, id="trailing-nul"),
    pytest.param('{"type":"ping",}', INVALID, None, id="trailing-comma"),
    pytest.param("[]", INVALID, None, id="array"),
    pytest.param('[{"type":"ping","ref":"a"}]', INVALID, None, id="array-of-frame"),
    pytest.param('"ping"', INVALID, None, id="string"),
    pytest.param("42", INVALID, None, id="number"),
    pytest.param("true", INVALID, None, id="bool"),
    pytest.param("null", INVALID, None, id="null"),
    pytest.param(b"\xff\xfe", INVALID, None, id="bytes-not-utf8"),
    pytest.param(b'{"type":"ping","ref":"\xc3\x28"}', INVALID, None, id="bytes-invalid-utf8-in-string"),
    pytest.param('{"type":"ping","ref":"\ud800"}', INVALID, None, id="str-lone-surrogate"),
    # the type field
    pytest.param("{}", INVALID, None, id="empty-object"),
    pytest.param(_j({"ref": "m", "to": "*", "body": "x"}), INVALID, "m", id="missing-type"),
    pytest.param(_j({"type": 5, "ref": "t"}), INVALID, "t", id="type-number"),
    pytest.param(_j({"type": None, "ref": "t"}), INVALID, "t", id="type-null"),
    pytest.param(_j({"type": ["ping"], "ref": "t"}), INVALID, "t", id="type-array"),
    pytest.param(_j({"TYPE": "ping", "ref": "t"}), INVALID, "t", id="type-key-wrong-case"),
    pytest.param(_j({"type": "shout", "ref": "u"}), UNKNOWN, "u", id="unknown-type"),
    pytest.param(_j({"type": "PING", "ref": "u"}), UNKNOWN, "u", id="type-value-wrong-case"),
    pytest.param(_j({"type": "", "ref": "u"}), UNKNOWN, "u", id="type-empty"),
    pytest.param(_j({"type": "message", "ref": "u"}), UNKNOWN, "u", id="server-type-from-client"),
    pytest.param(_j({"type": "error", "code": "x", "message": "y"}), UNKNOWN, None, id="error-from-client"),
    # send
    pytest.param(_send(body="hi", ref="s"), INVALID, "s", id="send-missing-to"),
    pytest.param(_send(to="*", ref="s"), INVALID, "s", id="send-missing-body"),
    pytest.param(_send(to="*", body="", ref="s"), INVALID, "s", id="send-empty-body"),
    pytest.param(_send(to="*", body=42, ref="s"), INVALID, "s", id="send-body-number"),
    pytest.param(_send(to="*", body=None, ref="s"), INVALID, "s", id="send-body-null"),
    pytest.param(_send(to="*", body=["hi"], ref="s"), INVALID, "s", id="send-body-array"),
    pytest.param(_send(to=None, body="hi", ref="s"), INVALID, "s", id="send-to-null"),
    pytest.param(_send(to="bob", body="hi", ref="a"), INVALID, "a", id="to-without-at"),
    pytest.param(_send(to="@", body="hi", ref="a"), INVALID, "a", id="to-bare-at"),
    pytest.param(_send(to="@bad name", body="hi", ref="a"), INVALID, "a", id="to-bad-name"),
    pytest.param(_send(to="#bad group", body="hi", ref="a"), INVALID, "a", id="to-bad-group"),
    pytest.param(_j({"type": "group", "op": "dance", "group": "devs", "ref": "g"}), INVALID, "g", id="group-bad-op"),
    pytest.param(_j({"type": "group", "op": "invite", "group": "devs", "ref": "g"}), INVALID, "g",
                 id="group-invite-without-user"),
    pytest.param(_j({"type": "group", "op": "set", "group": "devs", "ref": "g"}), INVALID, "g",
                 id="group-set-without-flag"),
    pytest.param(_j({"type": "group", "op": "join", "group": "a b", "ref": "g"}), INVALID, "g",
                 id="group-bad-name"),
    pytest.param(_send(to="", body="hi", ref="a"), INVALID, "a", id="to-empty"),
    pytest.param(_send(to="@" + "x" * 33, body="hi", ref="a"), INVALID, "a", id="to-name-too-long"),
    pytest.param(_send(to="*", body="hi", ref="f", **{"from": "eve"}), INVALID, "f", id="spoofed-from"),
    pytest.param(_send(**{"from": "eve"}, ref="f"), INVALID, "f", id="spoofed-from-only"),
    pytest.param(_send(to="*", body="hi", ref="f", id="1-0"), INVALID, "f", id="send-extra-id"),
    pytest.param(_send(to="*", body="x" * 8001, ref="b"), LARGE, "b", id="body-over-limit"),
    pytest.param(_send(to="*", body="\u00e9" * 8001, ref="b"), LARGE, "b", id="body-over-limit-multibyte"),
    # sizes: over max_frame_bytes nothing is decoded, so no ref
    pytest.param(_send(to="*", body="x" * 70_000, ref="b"), LARGE, None, id="frame-over-64KiB"),
    pytest.param(_send(to="*", body="\u00e9" * 33_000, ref="b"), LARGE, None, id="frame-over-64KiB-in-bytes"),
    pytest.param(b" " * (64 * 1024 + 1), LARGE, None, id="bytes-over-64KiB"),
    # ref itself unusable: never echoed
    pytest.param(_j({"type": "ping", "ref": "r" * (MAX_REF_CHARS + 1)}), INVALID, None, id="ref-too-long"),
    pytest.param(_j({"type": "ping", "ref": 7}), INVALID, None, id="ref-number"),
    pytest.param(_j({"type": "ping", "ref": ["a"]}), INVALID, None, id="ref-array"),
    pytest.param(_j({"type": "shout", "ref": "r" * (MAX_REF_CHARS + 1)}), UNKNOWN, None, id="unknown-type-long-ref"),
    # other types
    pytest.param(_j({"type": "ping", "ref": "p", "extra": 1}), INVALID, "p", id="ping-extra-field"),
    pytest.param(_j({"type": "who", "ref": "w", "all": True}), INVALID, "w", id="who-extra-field"),
    pytest.param(_j({"type": "who", "ref": "w", "limit": 0}), INVALID, "w", id="who-limit-0"),
    pytest.param(_j({"type": "who", "ref": "w", "limit": 1.5}), INVALID, "w", id="who-limit-float"),
    pytest.param(_j({"type": "who", "ref": "w", "cursor": 3}), INVALID, "w", id="who-cursor-number"),
    pytest.param(_j({"type": "who", "ref": "w", "cursor": "c" * 129}), INVALID, "w", id="who-cursor-too-long"),
    pytest.param(_j({"type": "ping", "ref": "a", "type2": "who"}), INVALID, "a", id="ping-type2"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": 0, "ref": "h"}), INVALID, "h", id="limit-0"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": -1, "ref": "h"}), INVALID, "h", id="limit-negative"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": 101, "ref": "h"}), INVALID, "h", id="limit-101"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": "5", "ref": "h"}), INVALID, "h", id="limit-string"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": True, "ref": "h"}), INVALID, "h", id="limit-bool"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": 5.0, "ref": "h"}), INVALID, "h", id="limit-float"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": 10**30, "ref": "h"}), INVALID, "h", id="limit-huge"),
    pytest.param(_j({"type": "history", "conv": "*", "before": "x", "ref": "h"}), INVALID, "h", id="before-bad"),
    pytest.param(_j({"type": "history", "conv": "*", "before": 5, "ref": "h"}), INVALID, "h", id="before-number"),
    pytest.param(_j({"type": "history", "conv": "*", "before": "1-2-3", "ref": "h"}), INVALID, "h",
                 id="before-three-parts"),
    pytest.param(_j({"type": "history", "conv": "bob", "ref": "h"}), INVALID, "h", id="conv-without-at"),
    pytest.param(_j({"type": "history", "ref": "h"}), INVALID, "h", id="conv-missing"),
    # login
    pytest.param(_j({"type": "login", "v": 2, "user": "a", "password": "p", "ref": "l"}), VERSION, "l", id="login-v2"),
    pytest.param(_j({"type": "login", "v": 0, "user": "a", "password": "p", "ref": "l"}), VERSION, "l", id="login-v0"),
    pytest.param(_j({"type": "login", "v": 2, "user": "bad name", "password": "p", "ref": "l"}), VERSION, "l",
                 id="login-v2-checked-before-name"),
    pytest.param(_j({"type": "login", "v": "1", "user": "a", "password": "p", "ref": "l"}), INVALID, "l",
                 id="login-v-string"),
    pytest.param(_j({"type": "login", "v": 1.0, "user": "a", "password": "p", "ref": "l"}), INVALID, "l",
                 id="login-v-float"),
    pytest.param(_j({"type": "login", "v": 1, "user": "a", "password": "p", "presence": "some", "ref": "l"}),
                 INVALID, "l", id="login-presence-unknown-mode"),
    pytest.param(_j({"type": "login", "v": 1, "user": "a", "password": "p", "presence": False, "ref": "l"}),
                 INVALID, "l", id="login-presence-not-a-string"),
    pytest.param(_j({"type": "login", "user": "a", "password": "p", "ref": "l"}), INVALID, "l", id="login-no-v"),
    pytest.param(_j({"type": "login", "v": 1, "user": "bad name", "password": "p", "ref": "l"}), USERNAME, "l",
                 id="login-bad-name"),
    pytest.param(_j({"type": "login", "v": 1, "user": "", "password": "p", "ref": "l"}), USERNAME, "l",
                 id="login-empty-name"),
    pytest.param(_j({"type": "login", "v": 1, "user": "x" * 33, "password": "p", "ref": "l"}), USERNAME, "l",
                 id="login-name-too-long"),
    pytest.param(_j({"type": "login", "v": 1, "user": "a@b", "password": "p"}), USERNAME, None,
                 id="login-name-bad-char"),
    pytest.param(_j({"type": "login", "v": 1, "user": 5, "password": "p", "ref": "l"}), INVALID, "l",
                 id="login-name-number"),
    pytest.param(_j({"type": "login", "v": 1, "user": "a", "ref": "l"}), INVALID, "l", id="login-no-password"),
    pytest.param(_j({"type": "login", "v": 1, "user": "a", "password": "", "ref": "l"}), INVALID, "l",
                 id="login-empty-password"),
    pytest.param(_j({"type": "login", "v": 1, "user": "a", "password": "p" * (MAX_PASSWORD_CHARS + 1), "ref": "l"}),
                 INVALID, "l", id="login-password-too-long"),
    pytest.param(_j({"type": "login", "v": 1, "user": "a", "password": "p", "ref": "l", "x": 1}), INVALID, "l",
                 id="login-extra-field"),
]


@AS
@pytest.mark.parametrize(("raw", "code", "ref"), BAD)
def test_bad_frames_map_to_their_error_code(raw: str | bytes, code: str, ref: str | None, as_bytes: bool) -> None:
    if as_bytes and isinstance(raw, str) and "\ud800" in raw:
        pytest.skip("a lone surrogate has no UTF-8 bytes")
    exc = _error(_as(raw, as_bytes))
    assert exc.code == ErrorCode(code)
    assert exc.ref == ref
    assert exc.message and len(exc.message) < 300


def test_bad_table_covers_every_parser_error_code() -> None:
    assert {p.values[1] for p in BAD} == {INVALID, UNKNOWN, VERSION, LARGE, USERNAME}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[" * 5000 + "]" * 5000, id="nested-arrays"),
        pytest.param('{"type":"ping","x":' + "[" * 5000 + "]" * 5000 + "}", id="nested-in-unknown-field"),
        pytest.param('{"type":"ping","x":' + '{"a":' * 3000 + "1" + "}" * 3000 + "}", id="nested-objects"),
    ],
)
def test_deeply_nested_json_is_invalid_frame(raw: str) -> None:
    assert len(raw.encode()) < Limits().max_frame_bytes
    assert _error(raw).code is ErrorCode.INVALID_FRAME


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[", id="open-bracket"),
        pytest.param("[1,", id="truncated-array"),
        pytest.param('[{"type":"ping"}', id="truncated-array-of-frame"),
        pytest.param('{"type":"shout"', id="truncated-unknown-type"),
        pytest.param('{"type":5', id="truncated-type-number"),
        pytest.param('{"type":"ping","x":1', id="truncated-after-unknown-field"),
        pytest.param('{"type":"send","to":"@bob","body":5', id="truncated-after-wrong-type"),
    ],
)
def test_truncated_json_after_a_schema_error_is_invalid_frame(raw: str) -> None:
    assert _error(raw).code is ErrorCode.INVALID_FRAME


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"type":"ping","x":1e400}', id="unknown-field"),
        pytest.param('{"type":"history","conv":"*","limit":1e400,"ref":"h"}', id="limit"),
        pytest.param('{"type":"login","v":-1e999,"user":"a","password":"p"}', id="version"),
        pytest.param("[1e400]", id="array"),
    ],
)
def test_number_out_of_range_is_invalid_frame(raw: str) -> None:
    assert _error(raw).code is ErrorCode.INVALID_FRAME


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "login", "v": 2, "user": "a", "password": "p", "token": "t"},
        {"type": "login", "v": 2, "user": "a", "token": "t"},
    ],
)
def test_newer_version_login_gets_unsupported_version(frame: dict[str, Any]) -> None:
    assert _error(_j(frame)).code is ErrorCode.UNSUPPORTED_VERSION


# -- limits ------------------------------------------------------------------------------


def test_default_limits() -> None:
    assert Limits() == Limits(max_frame_bytes=64 * 1024, max_body_chars=8000)
    assert FrameParser().limits == Limits()


@pytest.mark.parametrize("as_bytes", [False, True])
def test_frame_limit_is_in_bytes_and_inclusive(as_bytes: bool) -> None:
    limits = Limits(max_frame_bytes=100, max_body_chars=1000)
    head = '{"type":"send","to":"*","body":'
    fits = head + '"' + "x" * (100 - len(head) - 3) + '"}'
    assert len(fits.encode()) == 100
    frame = _parse(_as(fits, as_bytes), limits)
    assert isinstance(frame, f.Send)
    over = fits.replace('"x', '"xx', 1)
    assert _error(_as(over, as_bytes), limits).code is ErrorCode.TOO_LARGE
    multibyte = head + '"' + "\u00e9" * 40 + '"}'  # 40 chars, 80 bytes + head
    assert len(multibyte) <= 100 < len(multibyte.encode())
    assert _error(_as(multibyte, as_bytes), limits).code is ErrorCode.TOO_LARGE


def test_body_limit_is_in_characters() -> None:
    limits = Limits(max_body_chars=5)
    assert _parse(_send(to="*", body="\U0001f600" * 5), limits) == f.Send(to="*", body="\U0001f600" * 5)
    exc = _error(_send(to="*", body="abcdef", ref="r"), limits)
    assert (exc.code, exc.ref) == (ErrorCode.TOO_LARGE, "r")


def test_body_limit_applies_to_dm_and_broadcast() -> None:
    for to in ("*", "@bob"):
        assert _error(_send(to=to, body="x" * 8001)).code is ErrorCode.TOO_LARGE


# -- server frames: encode / parse_server_frame ------------------------------------------

SERVER_FRAMES: list[Any] = [
    f.Welcome(
        user="alice", online=["alice", "bob"], v=PROTOCOL_VERSION, session="tok",
        positions={"dm": "0-0", "*": "5-0"}, node="n1",
    ),
    f.Welcome(user="alice", online=[], v=PROTOCOL_VERSION, session="t", positions={}),
    f.Welcome(user="alice", online=["alice", "bob"], v=PROTOCOL_VERSION, session="t", positions={},
              online_total=5000, online_next="bob"),
    f.Ack(id="1700000000000-0", ts=1700000000000, ref="r1"),
    f.Ack(id="1-0", ts=1),
    f.Message(id="1-0", from_="alice", to="@bob", body="hi \"you\" \u00e9\U0001f600", ts=1),
    f.Message(id="2-0", from_="bob", to="*", body="all", ts=2),
    f.Presence(user="alice", status="online"),
    f.Presence(user="alice", status="offline"),
    f.PresenceBatch(online=["alice", "bob"], offline=["carol"]),
    f.PresenceBatch(online=[], offline=["carol"]),
    f.Online(users=["a", "b"], ref="w"),
    f.Online(users=[]),
    f.Online(users=["a", "b"], total=3, next="b", ref="w"),
    f.Online(users=["c"], total=3),
    f.History(conv="@bob", messages=[f.Message(id="1-0", from_="alice", to="@bob", body="x", ts=1)], ref="h"),
    f.History(conv="*", messages=[]),
    f.Pong(ref="p"),
    f.Pong(),
    f.Error(code="too_large", message="frame too large", ref="e"),
    f.Error(code="rate_limited", message="slow down", retry_after=1.5),
]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda fr: type(fr).__name__)
def test_server_frames_round_trip(frame: msgspec.Struct) -> None:
    wire = f.encode(frame)
    assert isinstance(wire, bytes)
    assert f.parse_server_frame(wire) == frame
    assert f.parse_server_frame(wire.decode()) == frame


def test_uncapped_online_lists_look_as_before_paging() -> None:
    """Old clients: a list that is everyone carries no new fields; a capped one adds count and cursor."""
    welcome = f.Welcome(user="a", online=["a"], v=PROTOCOL_VERSION, session="t", positions={})
    assert set(json.loads(f.encode(welcome))) == {"type", "user", "online", "v", "session", "positions"}
    assert f.encode(f.Online(users=["a"], ref="w")) == b'{"type":"online","users":["a"],"ref":"w"}'
    assert json.loads(f.encode(f.Online(users=["a", "b"], total=9, next="b"))) == {
        "type": "online", "users": ["a", "b"], "total": 9, "next": "b"
    }
    assert f.encode(f.Who()) == b'{"type":"who"}'


def test_message_uses_from_on_the_wire() -> None:
    wire = f.encode(f.Message(id="1-0", from_="alice", to="@bob", body="hi", ts=5))
    assert json.loads(wire) == {"type": "message", "id": "1-0", "from": "alice", "to": "@bob", "body": "hi", "ts": 5}


def test_history_page_sends_stored_json_as_is_and_parses_as_history() -> None:
    stored = [
        b'{"type":"message","id":"1-0","from":"alice","to":"@bob","body":"one","ts":1}',
        b'{"type":"message","id":"2-0","from":"bob","to":"@alice","body":"two","ts":2}',
    ]
    wire = f.encode(f.HistoryPage(conv="@bob", messages=[msgspec.Raw(m) for m in stored], ref="h"))
    assert wire == b'{"type":"history","conv":"@bob","messages":[' + b",".join(stored) + b'],"ref":"h"}'
    page = f.parse_server_frame(wire)
    assert isinstance(page, f.History) and page.ref == "h"
    assert [(m.id, m.from_, m.body) for m in page.messages] == [("1-0", "alice", "one"), ("2-0", "bob", "two")]


def test_error_frame_to_exception() -> None:
    frame = f.parse_server_frame(b'{"type":"error","code":"unknown_user","message":"no user named x","ref":"r"}')
    assert isinstance(frame, f.Error)
    exc = frame.to_exception()
    assert exc.code is ErrorCode.UNKNOWN_USER and exc.message == "no user named x"


@pytest.mark.parametrize(
    "wire",
    [b'{"type":"typing","user":"a"}', b'{"type":"welcome"}', b'{"type":"message","id":5}', b"{}"],
)
def test_unknown_or_unexpected_server_frames_come_back_as_dicts(wire: bytes) -> None:
    assert f.parse_server_frame(wire) == json.loads(wire)


@pytest.mark.parametrize("wire", [b"[1]", b'"x"', b"{", b""])
def test_server_data_that_is_not_an_object_raises(wire: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):  # ValidationError is a DecodeError
        f.parse_server_frame(wire)


# -- property: parse returns a frame or raises a ChatError, never anything else ----------


def _check_parse(data: str | bytes) -> None:
    try:
        frame = FrameParser().parse(data)
    except ChatError as exc:
        assert exc.ref is None or (isinstance(exc.ref, str) and len(exc.ref) <= MAX_REF_CHARS)
        assert exc.code in set(ErrorCode)
        return
    assert isinstance(frame, f.Login | f.Send | f.Who | f.HistoryRequest | f.Ping | f.Group | f.Groups)
    assert FrameParser().parse(f.encode(frame)) == frame  # whatever is accepted re-encodes to itself


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["*", "@bob", "@", "bob", "1-0", "1700000000000-3", "", "x" * 70])
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_field_names = st.sampled_from(["type", "ref", "to", "body", "from", "v", "user", "password", "conv", "before",
                                "limit", "x"])
_frame_like = st.builds(
    lambda kind, fields: {"type": kind, **fields} if kind is not None else fields,
    st.none() | st.sampled_from([*sorted(CLIENT_TYPES), "message", "PING", ""]) | _json_leaf,
    st.dictionaries(_field_names, _json_value, max_size=6),
)




@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
@example("[")
@example("[" * 5000)
def test_parse_arbitrary_text(data: str) -> None:
    _check_parse(data)


@settings(max_examples=300)
@given(st.binary(max_size=300))
@example(b'{"type":"shout"')
def test_parse_arbitrary_bytes(data: bytes) -> None:
    _check_parse(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(_frame_like, st.booleans())
def test_parse_arbitrary_frame_like_json(obj: dict[str, Any], as_bytes: bool) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    _check_parse(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@settings(max_examples=200)
@given(st.text(max_size=60), st.text(max_size=60) | st.none())
def test_parse_arbitrary_send_fields(to: str, ref: str | None) -> None:
    _check_parse(_send(to=to, body="hi", ref=ref))
