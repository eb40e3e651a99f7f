"""Usernames and conversation addresses: validation and canonical keys."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from precis_i18n import get_profile

from .confusables import INVISIBLE, name_skeletons
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


# RFC 8265 (PRECIS) usernames: UsernameCaseMapped decides what may be registered,
# UsernameCasePreserved gives the display form (the same rules, case kept).
_CASE_MAPPED = get_profile("UsernameCaseMapped")
_CASE_PRESERVED = get_profile("UsernameCasePreserved")

_REASONS = {  # precis_i18n's refusal reasons, said for people
    "precis_ignorable_properties": "usernames cannot contain invisible or filler characters",
    "old_hangul_jamo": "usernames cannot contain invisible or filler characters",
    "zero_width_joiner": "usernames cannot contain invisible or filler characters",
    "zero_width_nonjoiner": "usernames cannot contain invisible or filler characters",
    "spaces": "usernames cannot contain spaces",
    "has_compat": "usernames cannot contain compatibility characters (like \u00b2 or \ufb01)",
    "bidi_rule": "usernames cannot mix right-to-left and left-to-right text that way",
}


@dataclass(frozen=True, slots=True)
class Username:
    """A login name, checked against the registration rules.

    ``registrable`` is False for a name only the older rules accept (NFKC, letters,
    digits, ``_-.``): an account stored under it may still log in, but no new
    account is created with it.  ``refusal`` then says why the new rules refuse it.
    ``skeletons`` are its UTS #39 skeletons (fold, upper), see protocol/confusables.py.
    """

    display: str
    key: str
    skeletons: tuple[str, str]
    registrable: bool = True
    refusal: str = ""


def registration_name(raw: str) -> tuple[str, str]:
    """``(display, key)`` of a name that may be registered, or InvalidUsername saying why.

    PRECIS UsernameCaseMapped (RFC 8265) must accept it; then Chinwag's own
    rules: 1-32 characters, each a letter, a digit, ``_``, ``-`` or ``.``, none
    invisible.  The key is the same as :func:`normalize_name` gives (NFKC of the
    full case fold), so every account stored under the older rules keeps its key
    (``Straße`` and ``STRASSE`` stay one name, where RFC 8265's lower-casing alone
    would split them).
    """
    try:
        _CASE_MAPPED.enforce(raw)
        display = _CASE_PRESERVED.enforce(raw)
    except UnicodeEncodeError as exc:
        reason = str(exc.reason).rpartition("/")[2]
        raise InvalidUsername(_REASONS.get(reason)) from None
    if any(c in INVISIBLE for c in display):
        raise InvalidUsername(_REASONS["precis_ignorable_properties"])
    if not 1 <= len(display) <= MAX_NAME_CHARS or not all(_allowed(c) for c in display):
        raise InvalidUsername()
    return display, name_key(display)


def login_name(raw: str) -> Username:
    """The name a login asks for: registrable, or (older rules only) for an existing account."""
    try:
        display, key = registration_name(raw)
        return Username(display, key, name_skeletons(key))
    except InvalidUsername as exc:
        display, key = normalize_name(raw)  # raises InvalidUsername when even the older rules refuse
        return Username(display, key, name_skeletons(key), registrable=False, refusal=exc.message)


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
