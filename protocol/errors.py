"""Every error Chinwag can report to a client, as one tree.

Each leaf carries exactly one wire error code; the gateway turns any
:class:`ChatError` into an ``error`` frame in one place and the client library
turns an ``error`` frame back into the same class, so both ends raise and
catch the same types::

    ChatError                      base; .code, .message, .retry_after
    ├── ProtocolError              the frame itself is unusable
    │   ├── InvalidFrame           invalid_frame
    │   ├── UnknownType            unknown_type
    │   ├── UnsupportedVersion     unsupported_version
    │   └── TooLarge               too_large
    ├── StateError                 the frame is fine but not now
    │   ├── NotLoggedIn            not_logged_in
    │   └── AlreadyLoggedIn        already_logged_in
    ├── LoginError                 login refused; the server closes with 4001
    │   ├── InvalidUsername        invalid_username
    │   ├── UsernameTaken          username_taken
    │   ├── UsernameConfusable     username_confusable (looks like an existing account's name)
    │   └── BadPassword            bad_password
    ├── UnknownUser                unknown_user
    ├── NotFound                   not_found (no such group, upload or file)
    ├── FileError                  a file upload refused; nothing is stored
    │   ├── BadHash                bad_hash (the bytes do not match the SHA-256 given)
    │   └── QuotaExceeded          quota_exceeded (the user's file storage is full)
    ├── GroupError                 a group operation refused
    │   ├── GroupExists            group_exists
    │   ├── NotMember              not_member
    │   └── Forbidden              forbidden (owner only)
    ├── RateLimited                rate_limited
    ├── Unavailable                unavailable (Redis down; retry later)
    └── Internal                   internal (a bug; details only in the server log)

Messages are written for people and never contain exception text from the
server's internals.  Application close codes live in :class:`CloseCode`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    """The ``code`` field of an ``error`` frame."""

    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    NOT_LOGGED_IN = "not_logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    INVALID_USERNAME = "invalid_username"
    USERNAME_TAKEN = "username_taken"
    USERNAME_CONFUSABLE = "username_confusable"
    BAD_PASSWORD = "bad_password"
    UNKNOWN_USER = "unknown_user"
    NOT_FOUND = "not_found"
    GROUP_EXISTS = "group_exists"
    NOT_MEMBER = "not_member"
    FORBIDDEN = "forbidden"
    BAD_HASH = "bad_hash"
    QUOTA_EXCEEDED = "quota_exceeded"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 ones plus 4000-4999)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # gateway shutting down: reconnect elsewhere
    INVALID_UTF8 = 1007  # text frame that is not UTF-8 (websockets enforces it)
    TOO_BIG = 1009  # frame over the hard size cap
    INTERNAL_ERROR = 1011  # a bug in the gateway; logged with a traceback
    TRY_AGAIN_LATER = 1013  # login while Redis is unreachable: retry with backoff
    LOGIN_FAILED = 4001  # login refused; the error frame before it says why
    LOGIN_TIMEOUT = 4002  # no login frame in time
    SESSION_LOST = 4003  # the gateway lost its lease and could not keep the name
    TAKEN_OVER = 4004  # a reconnect presenting this session's token took the name over
    SLOW_CONSUMER = 4008  # outgoing buffer over its bound: the client stopped reading
    RATE_ABUSE = 4029  # kept sending while being told rate_limited


class ChatError(Exception):
    """Base of every error that becomes an ``error`` frame."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        self.ref: str | None = None  # the client frame's ref, echoed in the error frame
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    @staticmethod
    def from_code(
        code: str, message: str | None = None, *, retry_after: float | None = None
    ) -> ChatError:
        """Rebuild the matching subclass from a wire code (unknown codes become Internal)."""
        cls = _BY_CODE.get(code, Internal)
        return cls(message, retry_after=retry_after)


class ProtocolError(ChatError):
    """The frame cannot be used as sent."""

    code = ErrorCode.INVALID_FRAME
    default_message = "invalid frame"


class InvalidFrame(ProtocolError):
    code = ErrorCode.INVALID_FRAME
    default_message = "invalid frame"


class UnknownType(ProtocolError):
    code = ErrorCode.UNKNOWN_TYPE
    default_message = "unknown frame type"


class UnsupportedVersion(ProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION
    default_message = "unsupported protocol version; this server speaks v1"


class TooLarge(ProtocolError):
    code = ErrorCode.TOO_LARGE
    default_message = "frame too large"


class StateError(ChatError):
    code = ErrorCode.NOT_LOGGED_IN
    default_message = "not allowed in this state"


class NotLoggedIn(StateError):
    code = ErrorCode.NOT_LOGGED_IN
    default_message = "log in first"


class AlreadyLoggedIn(StateError):
    code = ErrorCode.ALREADY_LOGGED_IN
    default_message = "already logged in"


class LoginError(ChatError):
    code = ErrorCode.BAD_PASSWORD
    default_message = "login refused"


class InvalidUsername(LoginError):
    code = ErrorCode.INVALID_USERNAME
    default_message = "usernames are 1-32 letters, digits, '_', '-' or '.'"


class UsernameTaken(LoginError):
    code = ErrorCode.USERNAME_TAKEN
    default_message = "username exists: someone with that name is online"


class UsernameConfusable(LoginError):
    code = ErrorCode.USERNAME_CONFUSABLE
    default_message = "that name looks like an existing user's name; choose another"


class BadPassword(LoginError):
    code = ErrorCode.BAD_PASSWORD
    default_message = "wrong password for this username"


class UnknownUser(ChatError):
    code = ErrorCode.UNKNOWN_USER
    default_message = "no such user"


class NotFound(ChatError):
    code = ErrorCode.NOT_FOUND
    default_message = "not found"


class GroupError(ChatError):
    code = ErrorCode.FORBIDDEN
    default_message = "group operation refused"


class GroupExists(GroupError):
    code = ErrorCode.GROUP_EXISTS
    default_message = "a group with that name exists"


class NotMember(GroupError):
    code = ErrorCode.NOT_MEMBER
    default_message = "you are not a member of that group"


class Forbidden(GroupError):
    code = ErrorCode.FORBIDDEN
    default_message = "only the group's owner can do that"


class FileError(ChatError):
    code = ErrorCode.BAD_HASH
    default_message = "upload refused"


class BadHash(FileError):
    code = ErrorCode.BAD_HASH
    default_message = "the uploaded bytes do not match the SHA-256 given; nothing was stored"


class QuotaExceeded(FileError):
    code = ErrorCode.QUOTA_EXCEEDED
    default_message = "your file storage quota is used up"


class RateLimited(ChatError):
    code = ErrorCode.RATE_LIMITED
    default_message = "too many requests; slow down"


class Unavailable(ChatError):
    code = ErrorCode.UNAVAILABLE
    default_message = "service temporarily unavailable; retry shortly"


class Internal(ChatError):
    code = ErrorCode.INTERNAL
    default_message = "internal error"


_BY_CODE: dict[str, type[ChatError]] = {
    cls.code.value: cls
    for cls in (
        InvalidFrame,
        UnknownType,
        UnsupportedVersion,
        TooLarge,
        NotLoggedIn,
        AlreadyLoggedIn,
        InvalidUsername,
        UsernameTaken,
        UsernameConfusable,
        BadPassword,
        UnknownUser,
        NotFound,
        GroupExists,
        NotMember,
        Forbidden,
        BadHash,
        QuotaExceeded,
        RateLimited,
        Unavailable,
        Internal,
    )
}
