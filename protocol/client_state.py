"""What a chat client knows of its session, with no I/O: the client's sans-I/O core.

Modelled on the sans-I/O ``protocol.py`` of websockets: :class:`ClientState`
is fed the frames the server sent (already parsed) and the requests the
application makes, and answers with decisions; it never touches a socket, a
clock or an event loop.  :class:`client.chat.ChatClient` is the asyncio
adapter around it (connect, reconnect with backoff, read, write, futures),
and the unit tests drive it directly and synchronously.

It owns:

* **positions**: per stream (``"dm"``, ``"*"``, ``"#group"``) the id of the
  last message handed on.  They only move forward, and ``login.resume`` is
  built from them, so a reconnect resumes every stream where it stopped.
* **dedupe**: a message whose id is not above its stream's position was
  seen already (a replay overlapping the live traffic after a reconnect); it
  is dropped and counted in ``duplicates``.
* **requests by ref**: every request is registered with its ``ref`` until it
  is answered or abandoned; a reply (``ack``, ``online``, ``history``,
  ``error``, ...) is matched to it by ``ref``, a reply to nothing pending is
  dropped, and after a reconnect every request still pending is written
  again with its original ``ref`` (the server acks a retried send with the
  original id instead of storing it twice).
* **who is online**: ``welcome.online`` (everyone, or the first page when the
  server capped it: then ``online_total`` is set), merged with ``presence``
  and ``presence_batch`` events, and replaced by an unsolicited ``online``.
* **group membership** as this client has seen it: the groups of the
  welcome's positions, updated by ``group_info`` replies and ``group_event``
  pushes about this user.

Frames go in through :meth:`ClientState.receive`, which returns one of the
outcome constants (ints, so the per-message path allocates nothing new):
:data:`IGNORE`, :data:`EVENT`, :data:`REPLY`, :data:`WELCOMED`,
:data:`LOGIN_FAILED` or :data:`UPLOAD`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from . import frames as f
from .errors import CloseCode
from .names import id_tuple, name_key

W = TypeVar("W")

# What to do with a received frame (ClientState.receive).
IGNORE = 0  # nothing: a duplicate message, a reply nobody waits for, a frame type the client skips
EVENT = 1  # hand the frame to the application (a message, presence, a group event, an error without ref, ...)
REPLY = 2  # it answers the pending request pending[frame.ref]: resolve that (an ``error`` raises)
WELCOMED = 3  # the login succeeded and its state is applied: write resend() now, then go on
LOGIN_FAILED = 4  # an ``error`` answering the login: it was refused
UPLOAD = 5  # a reply to an upload chunk (no ref): give it to uploads[frame.upload]

# Closes after which reconnecting would be wrong: we asked for it, the server
# refused our login, or a newer connection of ours took the name over.
FINAL_CLOSES = frozenset((CloseCode.NORMAL, CloseCode.LOGIN_FAILED, CloseCode.TAKEN_OVER))

_GROUP_JOINS = frozenset(("create", "join"))
_GROUP_LEAVES = frozenset(("left", "removed"))


def reconnects_after(code: int | None) -> bool:
    """Whether a connection that closed with ``code`` should be re-established."""
    return code not in FINAL_CLOSES


def known_offline(name: str, online: set[str], online_total: int | None) -> bool:
    """Whether ``name`` is surely offline: only a complete list can tell (a capped one is its first page)."""
    if online_total is not None:
        return False
    key = name_key(name)
    return not any(name_key(user) == key for user in online)


def stream_of(message: f.Message) -> str:
    """The stream a pushed message belongs to: ``"*"``, ``"#group"``, or ``"dm"`` (our inbox)."""
    to = message.to
    return to if to[:1] in ("*", "#") else f.STREAM_DM


@dataclass(slots=True)
class Pending(Generic[W]):
    """A request sent and not yet answered: its encoded frame (to write again) and the adapter's waiter."""

    frame: bytes
    waiter: W


class ClientState(Generic[W]):
    """The state of one client across all its connections; ``W`` is the adapter's waiter type."""

    def __init__(self, ref_prefix: str) -> None:
        self.user: str | None = None  # our name as registered (from the last welcome)
        self.session: str | None = None  # token that takes our name back after a drop
        self.welcome: f.Welcome | None = None
        self.positions: dict[str, str] = {}  # stream -> id of the last message handed on
        self.duplicates = 0  # messages dropped because their stream had passed them
        # Who is online: everyone, or, when the server capped its list (online_total is not None),
        # its first page plus everyone seen coming online since.
        self.online: set[str] = set()
        self.online_total: int | None = None  # the server's count when it last sent a capped list
        self.groups: set[str] = set()  # name_key of every group we are a member of, as far as we know
        self.pending: dict[str, Pending[W]] = {}  # ref -> request not answered yet
        self.uploads: dict[str, Callable[[Any], None]] = {}  # upload id -> gets its ref-less replies
        self.awaiting_welcome = False  # a login was written and neither welcomed nor refused yet
        self._ref_prefix = ref_prefix  # refs stay unique across reconnects and clients
        self._refs: Iterator[int] = itertools.count(1)

    # -- what goes out ------------------------------------------------------------

    def next_ref(self) -> str:
        return f"{self._ref_prefix}-{next(self._refs)}"

    def login(self, user: str, password: str, presence: str) -> f.Login:
        """The ``login`` to write on a new socket: our session token, and every stream's position."""
        self.awaiting_welcome = True
        resume = dict(self.positions) if self.positions else None
        return f.Login(v=f.PROTOCOL_VERSION, user=user, password=password, session=self.session, resume=resume,
                       presence=presence)

    def login_abandoned(self) -> None:
        """The login got no answer in time (or its socket closed): a late welcome is not ours any more."""
        self.awaiting_welcome = False

    def request(self, frame: Any, waiter: W) -> bytes:
        """Register a request (its ``ref`` set) until :meth:`finished`; returns the bytes to write."""
        data = f.encode(frame)
        self.pending[frame.ref] = Pending(data, waiter)
        return data

    def watch_upload(self, upload: str, hook: Callable[[Any], None]) -> Callable[[], None]:
        """Give the ref-less replies to an upload's chunks to ``hook`` (outcome :data:`UPLOAD`); returns the unhook."""
        uploads = self.uploads
        uploads[upload] = hook

        def unhook() -> None:
            if uploads.get(upload) is hook:
                del uploads[upload]

        return unhook

    def finished(self, ref: str) -> None:
        """The request was answered, timed out or was given up: a later reply to it is dropped."""
        self.pending.pop(ref, None)

    def resend(self) -> list[bytes]:
        """Every request still unanswered, to write again (same ref) on a new logged-in socket."""
        return [request.frame for request in self.pending.values()]

    # -- what comes in ------------------------------------------------------------

    def receive(self, frame: f.ServerFrame | dict[str, Any]) -> int:
        """Apply a server frame to the state; returns what the adapter should do with it."""
        ref = getattr(frame, "ref", None)
        if ref is None:
            upload = getattr(frame, "upload", None)
            if upload is not None and upload in self.uploads:
                return UPLOAD  # a reply to a binary chunk: no ref, matched by upload id
        if isinstance(frame, f.Welcome):
            if not self.awaiting_welcome:
                return IGNORE
            self._welcomed(frame)
            return WELCOMED
        if isinstance(frame, f.Error):
            if ref is not None and ref in self.pending:
                return REPLY
            if self.awaiting_welcome:
                self.awaiting_welcome = False
                return LOGIN_FAILED
            return EVENT
        if ref is not None:
            if ref not in self.pending:
                return IGNORE  # a reply to a request already answered or abandoned
            if type(frame) is f.GroupInfo:
                self._group_info(frame)
            return REPLY
        if isinstance(frame, f.Message):
            return EVENT if self.first_time(frame) else IGNORE
        if isinstance(frame, f.Presence):
            if frame.status == "online":
                self.online.add(frame.user)
            else:
                self.online.discard(frame.user)
        elif isinstance(frame, f.PresenceBatch):
            self.online.update(frame.online)
            self.online.difference_update(frame.offline)
        elif isinstance(frame, f.Online):  # unsolicited snapshot after the server resynchronised
            self.online = set(frame.users)
            self.online_total = frame.total
        elif isinstance(frame, f.GroupEvent):
            self._group_event(frame)
        elif not isinstance(frame, dict):
            return IGNORE  # e.g. an ack without ref: nobody can be waiting for it
        return EVENT

    def first_time(self, message: f.Message) -> bool:
        """Advance the stream position; False for a message at or before it (a duplicate)."""
        to = message.to  # stream_of(), inlined: this runs for every message
        stream = to if to[:1] in ("*", "#") else f.STREAM_DM
        seen = self.positions.get(stream)
        if seen is not None and id_tuple(message.id) <= id_tuple(seen):
            self.duplicates += 1
            return False
        self.positions[stream] = message.id
        return True

    # -- internals ----------------------------------------------------------------

    def _welcomed(self, welcome: f.Welcome) -> None:
        self.awaiting_welcome = False
        self.welcome = welcome
        self.user = welcome.user
        self.session = welcome.session
        self.online = set(welcome.online)
        self.online_total = welcome.online_total  # None: that is everyone
        positions = self.positions
        for stream, position in welcome.positions.items():
            if stream not in positions or id_tuple(position) > id_tuple(positions[stream]):
                positions[stream] = position
        self.groups = {name_key(stream[1:]) for stream in welcome.positions if stream[:1] == "#"}

    def _group_info(self, info: f.GroupInfo) -> None:
        if info.position is not None:  # a reconnect resumes this group from where we joined it
            self.positions.setdefault(f"#{info.group}", info.position)
        if info.op in _GROUP_JOINS:
            self.groups.add(name_key(info.group))
        elif info.op == "leave":
            self.groups.discard(name_key(info.group))

    def _group_event(self, event: f.GroupEvent) -> None:
        if self.user is None or name_key(event.user) != name_key(self.user):
            return
        if event.event == "joined":
            self.groups.add(name_key(event.group))
        elif event.event in _GROUP_LEAVES:
            self.groups.discard(name_key(event.group))
