"""Usernames and conversation addresses: validation and canonical keys."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidFrame, InvalidUsername

MAX_NAME_CHARS = 32
BROADCAST = "*"
_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _allowed(ch: str) -> bool:
    return ch.isalpha() or ch.isdigit() or ch in "_-."


def normalize_name(raw: str) -> tuple[str, str]:
    """Return ``(display, key)`` for a user-typed name, or raise InvalidUsername.

    ``display`` is the NFKC form as typed; ``key`` is its NFKC case fold, which is
    what uniqueness is decided on ("Alice" and "ALICE" are one name).
    """
    display = unicodedata.normalize("NFKC", raw)
    if not 1 <= len(display) <= MAX_NAME_CHARS or not all(_allowed(c) for c in display):
        raise InvalidUsername()
    return display, name_key(display)


def name_key(display: str) -> str:
    """The case-insensitive key of an already-normalised name."""
    return unicodedata.normalize("NFKC", display.casefold())


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed ``to``/``conv`` value: ``@name`` (a user), ``#name`` (a group) or ``*`` (everyone)."""

    kind: Literal["user", "group", "broadcast"]
    name: str = ""  # display form as written (users and groups)
    key: str = ""  # canonical key (users and groups)

    def __str__(self) -> str:
        if self.kind == "broadcast":
            return BROADCAST
        return f"{'@' if self.kind == 'user' else '#'}{self.name}"


@functools.lru_cache(maxsize=4096)
def parse_address(raw: str) -> Address:
    """Parse ``"@bob"``, ``"#devs"`` or ``"*"``; anything else is an InvalidFrame.

    Memoised: the parser validates an address and the gateway routes on it,
    and a chat uses few distinct addresses, so the NFKC work is done once.
    """
    if raw == BROADCAST:
        return Address("broadcast")
    if raw[:1] in ("@", "#"):
        kind: Literal["user", "group"] = "user" if raw[0] == "@" else "group"
        try:
            display, key = normalize_name(raw[1:])
        except InvalidUsername:
            what = "username" if kind == "user" else "group name"
            raise InvalidFrame(f"invalid address {raw[:40]!r}: not a valid {what}") from None
        return Address(kind, display, key)
    raise InvalidFrame(f"invalid address {raw[:40]!r}: use '@user', '#group' or '*'")


def group_name(raw: str) -> tuple[str, str]:
    """``(display, key)`` of a group name (same rules as usernames), or InvalidFrame."""
    try:
        return normalize_name(raw.removeprefix("#"))
    except InvalidUsername:
        raise InvalidFrame(f"invalid group name {raw[:40]!r}: 1-32 letters, digits, '_', '-' or '.'") from None


_ID_MAX = 2**63 - 1


def is_message_id(raw: str) -> bool:
    """Message ids look like ``"<ms>-<seq>"``, both parts at most 2**63-1, and are above ``0-0``."""
    if not _ID_RE.fullmatch(raw):
        return False
    ms, seq = id_tuple(raw)
    return ms <= _ID_MAX and seq <= _ID_MAX and (ms, seq) > (0, 0)


def id_tuple(message_id: str) -> tuple[int, int]:
    """Sort key of a message id: ids order by (ms, seq)."""
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq)
