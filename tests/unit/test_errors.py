"""The ChatError tree: one class per wire code, rebuilt from the code on the client side."""

from __future__ import annotations

import pytest

from protocol import errors as e
from protocol import frames as f
from protocol.errors import ChatError, CloseCode, ErrorCode

# Every wire code and the leaf class documented for it (protocol/errors.py docstring).
BY_CODE: dict[str, type[ChatError]] = {
    "invalid_frame": e.InvalidFrame,
    "unknown_type": e.UnknownType,
    "unsupported_version": e.UnsupportedVersion,
    "too_large": e.TooLarge,
    "not_logged_in": e.NotLoggedIn,
    "already_logged_in": e.AlreadyLoggedIn,
    "invalid_username": e.InvalidUsername,
    "username_taken": e.UsernameTaken,
    "username_confusable": e.UsernameConfusable,
    "bad_password": e.BadPassword,
    "unknown_user": e.UnknownUser,
    "not_found": e.NotFound,
    "group_exists": e.GroupExists,
    "not_member": e.NotMember,
    "forbidden": e.Forbidden,
    "bad_hash": e.BadHash,
    "quota_exceeded": e.QuotaExceeded,
    "rate_limited": e.RateLimited,
    "unavailable": e.Unavailable,
    "internal": e.Internal,
}

PARENT: dict[type[ChatError], type[ChatError]] = {
    e.InvalidFrame: e.ProtocolError,
    e.UnknownType: e.ProtocolError,
    e.UnsupportedVersion: e.ProtocolError,
    e.TooLarge: e.ProtocolError,
    e.NotLoggedIn: e.StateError,
    e.AlreadyLoggedIn: e.StateError,
    e.InvalidUsername: e.LoginError,
    e.UsernameTaken: e.LoginError,
    e.UsernameConfusable: e.LoginError,
    e.BadPassword: e.LoginError,
    e.UnknownUser: ChatError,
    e.NotFound: ChatError,
    e.GroupExists: e.GroupError,
    e.NotMember: e.GroupError,
    e.Forbidden: e.GroupError,
    e.BadHash: e.FileError,
    e.QuotaExceeded: e.FileError,
    e.RateLimited: ChatError,
    e.Unavailable: ChatError,
    e.Internal: ChatError,
}


def test_table_covers_every_error_code() -> None:
    assert set(BY_CODE) == {c.value for c in ErrorCode}
    assert len(set(BY_CODE.values())) == len(BY_CODE)  # one class per code


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_from_code_builds_the_matching_leaf(code: ErrorCode) -> None:
    exc = ChatError.from_code(code.value)
    assert type(exc) is BY_CODE[code.value]
    assert exc.code is code
    assert exc.message == type(exc).default_message
    assert exc.retry_after is None and exc.ref is None


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_from_code_keeps_message_and_retry_after(code: ErrorCode) -> None:
    exc = ChatError.from_code(code.value, "custom words", retry_after=1.5)
    assert type(exc) is BY_CODE[code.value]
    assert exc.message == "custom words" == str(exc)
    assert exc.retry_after == 1.5


@pytest.mark.parametrize("code", ["", "nope", "INVALID_FRAME", "invalid-frame", " internal", "login_timeout"])
def test_unknown_codes_become_internal(code: str) -> None:
    exc = ChatError.from_code(code, "from a newer server")
    assert type(exc) is e.Internal
    assert exc.code is ErrorCode.INTERNAL
    assert exc.message == "from a newer server"


@pytest.mark.parametrize("cls", list(PARENT), ids=lambda c: c.__name__)
def test_hierarchy(cls: type[ChatError]) -> None:
    assert issubclass(cls, PARENT[cls])
    assert issubclass(cls, ChatError) and issubclass(cls, Exception)
    assert cls.default_message  # people-readable default for every leaf


@pytest.mark.parametrize("cls", [e.InvalidUsername, e.UsernameTaken, e.BadPassword])
def test_login_refusals_are_login_errors(cls: type[ChatError]) -> None:
    # The gateway closes with 4001 on LoginError; these must all be caught by it.
    with pytest.raises(e.LoginError):
        raise cls()


def test_unsupported_version_is_a_protocol_error_not_a_login_error() -> None:
    # The gateway catches it explicitly next to LoginError to close with 4001.
    assert issubclass(e.UnsupportedVersion, e.ProtocolError)
    assert not issubclass(e.UnsupportedVersion, e.LoginError)


def test_default_message_and_repr() -> None:
    exc = e.UnknownUser()
    assert exc.message == "no such user" == str(exc)
    assert repr(exc) == "UnknownUser('no such user')"
    assert repr(e.RateLimited("slow", retry_after=2)) == "RateLimited('slow')"
    assert e.Unavailable("").message == e.Unavailable.default_message  # empty message falls back


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
@pytest.mark.parametrize("ref", [None, "r1"])
def test_error_frame_round_trips_to_the_same_exception(code: ErrorCode, ref: str | None) -> None:
    original = BY_CODE[code.value]("a message", retry_after=0.25 if code is ErrorCode.RATE_LIMITED else None)
    wire = f.encode(f.error_frame(original, ref))
    frame = f.parse_server_frame(wire)
    assert isinstance(frame, f.Error)
    assert (frame.code, frame.message, frame.ref) == (code.value, "a message", ref)
    back = frame.to_exception()
    assert type(back) is type(original)
    assert (back.message, back.retry_after) == (original.message, original.retry_after)


def test_error_frame_omits_unset_optional_fields() -> None:
    wire = f.encode(f.error_frame(e.NotLoggedIn()))
    assert wire == b'{"type":"error","code":"not_logged_in","message":"log in first"}'


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (CloseCode.NORMAL, 1000),
        (CloseCode.GOING_AWAY, 1001),
        (CloseCode.INVALID_UTF8, 1007),
        (CloseCode.TOO_BIG, 1009),
        (CloseCode.INTERNAL_ERROR, 1011),
        (CloseCode.LOGIN_FAILED, 4001),
        (CloseCode.LOGIN_TIMEOUT, 4002),
        (CloseCode.SESSION_LOST, 4003),
        (CloseCode.SLOW_CONSUMER, 4008),
    ],
)
def test_close_codes(member: CloseCode, value: int) -> None:
    assert member == value


def test_application_close_codes_are_in_the_private_range() -> None:
    for member in CloseCode:
        assert member < 1016 or 4000 <= member <= 4999, member
