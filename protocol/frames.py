"""Wire protocol v1: typed frames, parsing and encoding, with no I/O.

A frame is one JSON object per WebSocket message with a ``"type"`` field.
:func:`FrameParser.parse` turns client bytes into a typed frame or raises a
:class:`~protocol.errors.ChatError`; :func:`encode` turns any frame into the
bytes to send.  The client library uses :func:`parse_server_frame` the other
way round.  docs/protocol.md describes every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from .errors import (
    ChatError,
    InvalidFrame,
    TooLarge,
    UnknownType,
    UnsupportedVersion,
)
from .files import FileRef, check_file_name, check_file_ref, check_mime, check_sha256
from .names import group_name, is_message_id, normalize_name, parse_address

PROTOCOL_VERSION = 1
MAX_REF_CHARS = 64
MAX_PASSWORD_CHARS = 1024
MAX_HISTORY_LIMIT = 100
MAX_CURSOR_CHARS = 128  # who.cursor: today a display name (at most 32 characters)

Ref = Annotated[str, msgspec.Meta(max_length=MAX_REF_CHARS)]

# login.presence: a `presence` frame per change (v1's behaviour), changes coalesced into
# `presence_batch` frames, or none at all (`who` still answers).
PRESENCE_EACH, PRESENCE_BATCHED, PRESENCE_OFF = "each", "batched", "off"
PRESENCE_MODES = (PRESENCE_EACH, PRESENCE_BATCHED, PRESENCE_OFF)


class _ClientFrame(
    msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    ref: Ref | None = None


# Streams a client follows, as named in ``resume`` and ``welcome.positions``.
STREAM_DM = "dm"  # the user's own inbox: every DM addressed to them
STREAM_BROADCAST = "*"
RESUMABLE = frozenset((STREAM_DM, STREAM_BROADCAST))  # plus "#group" for each group


def is_resumable(stream: str) -> bool:
    return stream in RESUMABLE or stream.startswith("#")


class Login(_ClientFrame, tag="login"):
    """First frame of every connection; registers the name on first use.

    ``session`` is the token of an earlier ``welcome``: presenting it takes the
    name over from a connection the server still thinks is alive.  ``resume``
    maps streams (``"dm"``, ``"*"``) to the last message id the client saw;
    the server replays everything after it before going live.
    """

    v: int
    user: str
    password: Annotated[str, msgspec.Meta(max_length=MAX_PASSWORD_CHARS)]
    session: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    resume: dict[str, str] | None = None
    presence: str = PRESENCE_EACH  # how to hear of others coming and going: one of PRESENCE_MODES


class Send(_ClientFrame, tag="send"):
    """A message to ``@user``, ``#group`` or ``*``: text, a stored file, or both."""

    to: str
    body: str = ""
    file: FileRef | None = None


class Who(_ClientFrame, tag="who"):
    """Ask for a page of the online users, in name order: the first, or the one after ``cursor``.

    ``cursor`` is the ``next`` of the previous ``online`` answer; ``limit`` asks for a smaller page
    than the server's (larger ones get the server's).  A ``who`` with neither gets the first page,
    which is everyone unless more are online than one page holds.
    """

    cursor: Annotated[str, msgspec.Meta(max_length=MAX_CURSOR_CHARS)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None


class HistoryRequest(_ClientFrame, tag="history"):
    """A page of a conversation, newest ``limit`` messages before ``before``."""

    conv: str
    before: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_HISTORY_LIMIT)] = 50


class Ping(_ClientFrame, tag="ping"):
    """Application-level liveness check; answered with ``pong``."""


GROUP_OPS = ("create", "join", "leave", "invite", "remove", "members", "set")


class Group(_ClientFrame, tag="group"):
    """A group operation: create, join, leave, members, and (owner only) invite, remove, set."""

    op: str
    group: str
    user: str | None = None  # invite, remove
    invite_only: bool | None = None  # create, set


class Groups(_ClientFrame, tag="groups"):
    """List the groups one is a member of."""


class Upload(_ClientFrame, tag="upload"):
    """Start (or resume) uploading a file; the chunks follow as binary frames (protocol/files.py)."""

    name: str
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: str
    mime: str = "application/octet-stream"


ClientFrame = Login | Send | Who | HistoryRequest | Ping | Group | Groups | Upload
CLIENT_TYPES = frozenset(("login", "send", "who", "history", "ping", "group", "groups", "upload"))


class _ServerFrame(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class Welcome(_ServerFrame, tag="welcome"):
    user: str
    online: list[str]  # the first page of who is online (all of them unless online_next is set)
    v: int  # always sent (omit_defaults would drop a default)
    session: str  # token for taking the name over on reconnect
    positions: dict[str, str]  # where each stream starts for this connection (resume from here)
    node: str = ""
    recovered: dict[str, bool] | None = None  # per resumed stream: False = history no longer reaches back
    online_total: int | None = None  # only when online is capped: how many are online
    online_next: str | None = None  # ... and the cursor for `who` to page on from
    ref: str | None = None


class Ack(_ServerFrame, tag="ack"):
    id: str
    ts: int
    ref: str | None = None
    duplicate: bool = False  # a retried send: stored once, this is the original id


class Message(_ServerFrame, tag="message"):
    id: str
    from_: str = msgspec.field(name="from")
    to: str = ""
    body: str = ""
    ts: int = 0
    file: FileRef | None = None


class Presence(_ServerFrame, tag="presence"):
    user: str
    status: str  # "online" | "offline"


class PresenceBatch(_ServerFrame, tag="presence_batch"):
    """Presence changes of the last batch window, for logins with ``presence: "batched"``.

    A user is in one list only, with their status at the end of the window.
    """

    online: list[str]
    offline: list[str]


class Online(_ServerFrame, tag="online"):
    """A page of who is online: everyone, unless ``total`` (set only when it is not everyone) says more."""

    users: list[str]
    total: int | None = None  # how many are online; absent when users is everyone
    next: str | None = None  # cursor for the next page (who.cursor); absent on the last page
    ref: str | None = None


class History(_ServerFrame, tag="history"):
    conv: str
    messages: list[Message]
    ref: str | None = None


class HistoryPage(_ServerFrame, tag="history"):
    """Server-side twin of :class:`History` whose messages are stored JSON, sent as is."""

    conv: str
    messages: list[msgspec.Raw]
    ref: str | None = None


class Pong(_ServerFrame, tag="pong"):
    ref: str | None = None


class Error(_ServerFrame, tag="error"):
    code: str
    message: str
    ref: str | None = None
    retry_after: float | None = None
    upload: str | None = None  # an error about an upload chunk: which upload
    offset: int | None = None  # ... and how many bytes the server has (send the next chunk from there)

    def to_exception(self) -> ChatError:
        return ChatError.from_code(self.code, self.message, retry_after=self.retry_after)


class GroupInfo(_ServerFrame, tag="group_info"):
    """Reply to a group operation: the group as it is now (``members`` empty after ``leave``)."""

    op: str
    group: str
    owner: str
    invite_only: bool
    members: list[str]
    position: str | None = None  # create/join: resume the group from here (as "#group")
    ref: str | None = None


class GroupSummary(msgspec.Struct, omit_defaults=True):
    group: str
    owner: str
    invite_only: bool


class GroupList(_ServerFrame, tag="groups"):
    groups: list[GroupSummary]
    ref: str | None = None


class GroupEvent(_ServerFrame, tag="group_event"):
    """Pushed to a group's members (and to an invited user): joined, left, invited, removed, owner, updated."""

    group: str
    event: str
    user: str
    by: str | None = None
    invite_only: bool | None = None


class UploadReady(_ServerFrame, tag="upload_ready"):
    """Reply to ``upload``: send chunks of at most ``chunk`` bytes from ``offset`` on."""

    upload: str
    offset: int
    chunk: int
    ref: str | None = None


class ChunkAck(_ServerFrame, tag="chunk_ack"):
    """Reply to an upload chunk: the server now has ``offset`` bytes."""

    upload: str
    offset: int


class Uploaded(_ServerFrame, tag="uploaded"):
    """The file is stored (its last chunk arrived, or ``upload`` found it stored already)."""

    upload: str
    file: FileRef
    ref: str | None = None


ServerFrame = (
    Welcome | Ack | Message | Presence | PresenceBatch | Online | History | Pong | Error | GroupInfo | GroupList
    | GroupEvent | UploadReady | ChunkAck | Uploaded
)

_client_decoder = msgspec.json.Decoder(ClientFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits the parser enforces (the gateway builds them from Settings)."""

    max_frame_bytes: int = 64 * 1024
    max_body_chars: int = 8000


class FrameParser:
    """Turns raw client data into a validated frame, or raises a ChatError.

    Errors carry the frame's ``ref`` (when it has a usable one) in ``.ref`` so
    the reply can echo it.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    def parse(self, data: str | bytes) -> ClientFrame:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data  # once per frame
        if len(raw) > self.limits.max_frame_bytes:
            # Not worth decoding a huge frame just to find its ref.
            raise TooLarge(f"frame is {len(raw)} bytes; the limit is {self.limits.max_frame_bytes}")
        try:
            return self._parse(raw)
        except ChatError as exc:
            exc.ref = _salvage_ref(data)
            raise

    def _parse(self, raw: bytes) -> ClientFrame:
        try:
            frame: ClientFrame = _client_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise _classify(raw, str(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise InvalidFrame("not a JSON object in UTF-8") from None
        self._check(frame)
        return frame

    def _check(self, frame: ClientFrame) -> None:
        if isinstance(frame, Send):
            if frame.file is not None:
                check_file_ref(frame.file)
            elif not frame.body:
                raise InvalidFrame("body must be a non-empty string (or send a file)")
            if len(frame.body) > self.limits.max_body_chars:
                raise TooLarge(f"body is {len(frame.body)} characters; the limit is {self.limits.max_body_chars}")
            parse_address(frame.to)
        elif isinstance(frame, Login):
            if frame.v != PROTOCOL_VERSION:
                raise UnsupportedVersion()
            if not frame.password:
                raise InvalidFrame("password must be a non-empty string")
            if frame.presence not in PRESENCE_MODES:
                raise InvalidFrame(f"presence must be one of {', '.join(PRESENCE_MODES)}")
            normalize_name(frame.user)
            for stream, position in (frame.resume or {}).items():
                if not is_resumable(stream):
                    raise InvalidFrame(f"cannot resume {stream[:40]!r}: streams are 'dm', '*' and '#group'")
                if stream.startswith("#"):
                    group_name(stream)
                if not is_message_id(position) and position != "0-0":
                    raise InvalidFrame(f"resume position for {stream!r} must be a message id")
        elif isinstance(frame, Group):
            if frame.op not in GROUP_OPS:
                raise InvalidFrame(f"unknown group op {frame.op[:20]!r}: one of {', '.join(GROUP_OPS)}")
            group_name(frame.group)
            if frame.op in ("invite", "remove"):
                if frame.user is None:
                    raise InvalidFrame(f"group {frame.op} needs 'user'")
                normalize_name(frame.user.removeprefix("@"))
            if frame.op == "set" and frame.invite_only is None:
                raise InvalidFrame("group set needs 'invite_only'")
        elif isinstance(frame, Upload):
            check_file_name(frame.name)
            check_mime(frame.mime)
            check_sha256(frame.sha256)
        elif isinstance(frame, HistoryRequest):
            parse_address(frame.conv)
            if frame.before is not None and not is_message_id(frame.before):
                raise InvalidFrame("before must be a message id like '1700000000000-0'")


def _classify(raw: bytes, detail: str) -> ChatError:
    """Explain a frame that failed validation (it may still be malformed JSON further on)."""
    try:
        obj = _any_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return InvalidFrame("not a JSON object in UTF-8")
    if not isinstance(obj, dict):
        return InvalidFrame("a frame must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return InvalidFrame("a frame needs a string 'type'")
    if kind not in CLIENT_TYPES:
        return UnknownType(f"unknown frame type {kind[:40]!r}")
    version = obj.get("v")
    if kind == "login" and type(version) is int and version != PROTOCOL_VERSION:
        return UnsupportedVersion()  # before any field check: a newer client must hear this
    if "from" in obj and kind == "send":
        return InvalidFrame("'from' is set by the server, not the client")
    return InvalidFrame(f"bad {kind} frame: {detail}")


def _salvage_ref(data: str | bytes) -> str | None:
    """Best-effort ``ref`` from a rejected frame, so the error can be matched."""
    try:
        obj = _any_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, UnicodeEncodeError, ValueError,
            RecursionError):
        return None
    if isinstance(obj, dict):
        ref = obj.get("ref")
        if isinstance(ref, str) and len(ref) <= MAX_REF_CHARS:
            return ref
    return None


# Every message frame starts with these bytes and its id right after them: msgspec encodes the
# tag and then ``id`` first, and the Redis scripts build the frame from the same Struct
# (gateway/store.py).  The gateway reads ids with frame_id on every delivery, without a parse.
MESSAGE_PREFIX = _encoder.encode(Message(id="\ue000", from_="")).partition("\ue000".encode())[0]
assert MESSAGE_PREFIX.endswith(b'"'), MESSAGE_PREFIX  # the placeholder was found
_ID_AT = len(MESSAGE_PREFIX)


def frame_id(frame: bytes) -> tuple[int, int]:
    """The id of an encoded message frame, as (ms, seq)."""
    end = frame.index(b'"', _ID_AT)
    ms, _, seq = frame[_ID_AT:end].partition(b"-")
    return int(ms), int(seq)


def encode(frame: msgspec.Struct) -> bytes:
    """Serialise any frame to the UTF-8 JSON bytes of one text message."""
    return _encoder.encode(frame)


def error_frame(exc: ChatError, ref: str | None = None) -> Error:
    """The one place a ChatError becomes a wire ``error`` frame."""
    return Error(code=exc.code.value, message=exc.message, ref=ref, retry_after=exc.retry_after)


def parse_server_frame(data: str | bytes) -> ServerFrame | dict[str, Any]:
    """Decode a server frame for clients; unknown types come back as a plain dict."""
    try:
        frame: ServerFrame = _server_decoder.decode(data)
        return frame
    except msgspec.ValidationError:
        obj = _any_decoder.decode(data)
        if isinstance(obj, dict):
            return obj
        raise


