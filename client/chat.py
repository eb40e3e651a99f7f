"""The asyncio chat client every Chinwag front end uses (CLI, Tk GUI, load tester, tests).

    chat = await ChatClient.open(["ws://gw1:9000", "ws://gw2:9000"], "alice", "secret")
    ack = await chat.send("@bob", "hi")
    async for event in chat.events():
        ...

Requests (``send``, ``who``, ``history``, ``ping``) are matched to their
replies by ``ref`` and raise the :mod:`protocol.errors` class of any ``error``
reply.  Everything the server pushes (messages, presence, errors without a
ref), connection state changes and the final close arrive through
:meth:`events`.

Nothing is lost across failures, and users never write retry loops: when the
connection drops the client reconnects by itself (capped, jittered backoff,
rotating through the URLs), takes its name back with its session token,
resumes every stream after the last message id it saw, and re-sends every
request still unanswered with its original ``ref`` (the server acks a retried
send with the original id instead of storing it twice).  Messages are handed
on at most once: one whose id is not above the last one of its stream is
counted in ``duplicates`` and dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import broadcast
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from common.backoff import Backoff
from protocol import frames as f
from protocol.errors import ChatError, CloseCode, LoginError, RateLimited, Unavailable, UsernameTaken
from protocol.files import FileRef
from protocol.names import id_tuple

log = logging.getLogger("chinwag.client")

# Closes after which reconnecting would be wrong: we asked for it, the server
# refused our login, or a newer connection of ours took the name over.
_FINAL_CLOSES = frozenset((CloseCode.NORMAL, CloseCode.LOGIN_FAILED, CloseCode.TAKEN_OVER))


class Disconnected(ConnectionError):
    """The connection closed (for good) before the reply arrived."""


@dataclass(frozen=True, slots=True)
class Closed:
    """Last event of a client: the close code and reason that ended it."""

    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The connection went ``"reconnecting"`` or (back to) ``"connected"``.

    ``recovered`` (on reconnects) tells, per resumed stream, whether the server
    still had everything after our resume point; ``False`` means some messages
    are only in ``history`` now, or gone.
    """

    state: str
    url: str | None = None
    recovered: dict[str, bool] | None = None


Event = (
    f.Message | f.Presence | f.PresenceBatch | f.Online | f.GroupEvent | f.Error | Closed | StateChanged
    | dict[str, Any]
)


@dataclass(slots=True)
class _Request:
    frame: bytes
    future: asyncio.Future[Any]


class ChatClient:
    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        reconnect: bool = True,
        open_timeout: float = 5.0,
        request_timeout: float = 10.0,
        backoff_cap: float = 5.0,
        ca_file: str | None = None,
        presence: str = f.PRESENCE_BATCHED,
    ) -> None:
        if presence not in f.PRESENCE_MODES:
            raise ValueError(f"presence must be one of {', '.join(f.PRESENCE_MODES)}")
        self.presence = presence  # login.presence: batched changes by default (cheap on big servers)
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one server URL is needed")
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.backoff_cap = backoff_cap
        # wss:// certificates are always verified: by the system's CAs, or by ca_file instead.
        self.ssl_context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.takeover_patience = 30.0  # seconds a reconnect keeps trying while our name looks taken
        self.user: str | None = None
        self.node: str | None = None
        self.url: str | None = None
        # Who is online: everyone, or, when the server capped its list (online_total is not None),
        # its first page plus everyone seen coming online since.  who() pages through everyone.
        self.online: set[str] = set()
        self.online_total: int | None = None  # the server's count when it last sent a capped list
        self.positions: dict[str, str] = {}  # stream -> last message id seen
        self.session: str | None = None  # token that takes our name back after a drop
        self.state = "idle"
        self.reconnects = 0
        self.duplicates = 0
        self.closed: Closed | None = None
        self.welcome: f.Welcome | None = None
        self._password: str | None = None
        self._ws: ClientConnection | None = None
        self._ready = False  # logged in on the current socket: requests may be written
        self._reader: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._pending: dict[str, _Request] = {}
        self._upload_hooks: dict[str, Callable[[Any], None]] = {}  # upload id -> gets its ref-less replies
        self._login: asyncio.Future[f.Welcome] | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._refs = itertools.count(1)
        self._ref_prefix = secrets.token_hex(4)  # refs stay unique across reconnects and clients
        self._closing = False
        self._url_index = 0

    # -- connection ---------------------------------------------------------

    @classmethod
    async def open(cls, urls: str | Sequence[str], user: str, password: str, **kwargs: Any) -> ChatClient:
        """Connect (first reachable URL) and log in; raises the login's ChatError."""
        client = cls(urls, **kwargs)
        await client.connect()
        try:
            await client.login(user, password)
        except BaseException:
            await client.close()
            raise
        return client

    async def connect(self) -> None:
        """Open a socket to the first URL that answers (each tried once)."""
        error: BaseException | None = None
        for _ in range(len(self.urls)):
            url = self.urls[self._url_index % len(self.urls)]
            try:
                await self._open_socket(url)
                return
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                error = exc
                self._url_index += 1
        assert error is not None
        raise error

    async def login(self, user: str, password: str) -> f.Welcome:
        self._password = password
        welcome = await self._do_login(user, password)
        self.state = "connected"
        return welcome

    async def close(self) -> None:
        """Log out for good: no reconnect, pending requests fail with Disconnected."""
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            await asyncio.gather(self._reconnector, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._finish(Closed(CloseCode.NORMAL, "closed by client"))

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.closed is None and self.state in ("idle", "connected")

    # -- requests -----------------------------------------------------------

    async def send(self, to: str, body: str = "", *, ref: str | None = None, file: FileRef | None = None) -> f.Ack:
        """Send to ``"@user"``, ``"#group"`` or ``"*"`` (text, a stored file, or both); returns the ack.

        Retried with the same ``ref`` while the server answers ``unavailable``
        (Redis away) or ``rate_limited`` (after the wait it asks for) until
        ``request_timeout``; the server stores it once.
        """
        frame = f.Send(to=to, body=body, file=file, ref=ref or self._ref())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        backoff = Backoff(base=0.1, cap=1.0)
        while True:
            try:
                reply = await self._request(frame, max(0.01, deadline - loop.time()))
                assert isinstance(reply, f.Ack)
                return reply
            except (Unavailable, RateLimited) as exc:
                delay = exc.retry_after if exc.retry_after else backoff.next_delay()
                if loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)

    async def who(self) -> list[str]:
        """Everyone online, in code-point order: one ``who`` per page (one for up to 1,000 names)."""
        names: list[str] = []
        page = await self.who_page()
        names += page.users
        while page.next is not None:
            page = await self.who_page(page.next)
            names += page.users
        return names

    async def who_page(self, cursor: str | None = None, limit: int | None = None) -> f.Online:
        """One page of who is online: the first, or the one after ``cursor`` (a previous page's ``next``)."""
        reply = await self._request(f.Who(cursor=cursor, limit=limit, ref=self._ref()))
        assert isinstance(reply, f.Online)
        return reply

    async def history(self, conv: str, before: str | None = None, limit: int = 50) -> list[f.Message]:
        reply = await self._request(f.HistoryRequest(conv=conv, before=before, limit=limit, ref=self._ref()))
        assert isinstance(reply, f.History)
        return reply.messages

    async def ping(self) -> None:
        await self._request(f.Ping(ref=self._ref()))

    async def group(
        self, op: str, group: str, *, user: str | None = None, invite_only: bool | None = None
    ) -> f.GroupInfo:
        """A group operation: create, join, leave, members, invite, remove, set (see docs/protocol.md)."""
        frame = f.Group(op=op, group=group.removeprefix("#"), user=user, invite_only=invite_only, ref=self._ref())
        reply = await self._request(frame)
        assert isinstance(reply, f.GroupInfo)
        if reply.position is not None:  # a reconnect resumes this group from where we joined it
            self.positions.setdefault(f"#{reply.group}", reply.position)
        return reply

    async def groups(self) -> list[f.GroupSummary]:
        """The groups this user is a member of."""
        reply = await self._request(f.Groups(ref=self._ref()))
        assert isinstance(reply, f.GroupList)
        return reply.groups

    async def send_raw(self, data: str | bytes) -> None:
        """Send arbitrary data (for tests and tools that speak the protocol by hand)."""
        if self._ws is None:
            raise Disconnected("not connected")
        await self._ws.send(data)

    async def request(self, frame: Any, timeout: float | None = None) -> Any:
        """Send any client frame that has a ``ref`` and return its reply (raising an ``error`` reply).

        Like every request it is re-sent with the same ref after a reconnect.
        """
        if frame.ref is None:
            frame.ref = self._ref()
        return await self._request(frame, timeout)

    async def send_binary(self, data: bytes) -> None:
        """Write one binary frame (an upload chunk) on the logged-in socket; Disconnected if there is none."""
        ws = self._ws
        if ws is None or not self._ready:
            raise Disconnected("not connected")
        try:
            await ws.send(data)
        except ConnectionClosed as exc:
            raise Disconnected(str(exc)) from None

    def watch_upload(self, upload: str, hook: Callable[[Any], None]) -> Callable[[], None]:
        """Route the replies to an upload's chunks (``chunk_ack``, ``uploaded``, ``error`` with that
        ``upload``) to ``hook``, which also gets ``None`` whenever the socket closes.  Returns the unhook."""
        self._upload_hooks[upload] = hook

        def unhook() -> None:
            if self._upload_hooks.get(upload) is hook:
                del self._upload_hooks[upload]

        return unhook

    # -- events -------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every pushed event, ending after the :class:`Closed` event."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Closed):
                return

    async def next_event(self, timeout: float | None = None) -> Event:
        return await asyncio.wait_for(self._events.get(), timeout)

    # -- internals: sockets and login -----------------------------------------

    async def _open_socket(self, url: str) -> None:
        options: dict[str, Any] = {}
        if url.startswith("wss:") and self.ssl_context is not None:
            options["ssl"] = self.ssl_context  # else websockets verifies against the system CAs
        ws = await connect(url, open_timeout=self.open_timeout, compression=None, max_size=2**22, **options)
        self._ws = ws
        self._ready = False
        self.url = url
        self.closed = None
        self._reader = asyncio.create_task(self._read(ws), name="chinwag-client-reader")

    async def _do_login(self, user: str, password: str) -> f.Welcome:
        """Log in on the current socket, resuming where we were if we were anywhere."""
        assert self._ws is not None
        self._login = asyncio.get_running_loop().create_future()
        resume = dict(self.positions) if self.positions else None
        login = f.Login(v=f.PROTOCOL_VERSION, user=user, password=password, session=self.session, resume=resume,
                        presence=self.presence)
        try:
            await self._ws.send(f.encode(login), text=True)
        except ConnectionClosed as exc:
            raise Disconnected(str(exc)) from None
        welcome = await asyncio.wait_for(self._login, self.request_timeout)  # cancelled on timeout
        self.welcome = welcome
        self.user = welcome.user
        self.node = welcome.node
        self.session = welcome.session
        self.online = set(welcome.online)
        self.online_total = welcome.online_total  # None: that is everyone
        for stream, position in welcome.positions.items():
            if stream not in self.positions or id_tuple(position) > id_tuple(self.positions[stream]):
                self.positions[stream] = position
        self._ready = True
        for request in list(self._pending.values()):  # unanswered on the old socket: again, same ref
            self._write(request.frame)
        return welcome

    async def _reconnect(self) -> None:
        """Back off, rotate URLs, log in with our session token and positions; give up only when refused."""
        backoff = Backoff(base=0.1, cap=self.backoff_cap)
        started = asyncio.get_running_loop().time()
        self.state = "reconnecting"
        self._events.put_nowait(StateChanged("reconnecting", self.url))
        while not self._closing:
            await asyncio.sleep(backoff.next_delay())
            self._url_index += 1
            url = self.urls[self._url_index % len(self.urls)]
            try:
                await self._open_socket(url)
                welcome = await self._do_login(self.user or "", self._password or "")
            except UsernameTaken:
                # Our own earlier attempt may hold the name under a token we never got (its
                # welcome was lost): that session ends when its socket's close is noticed, or
                # its gateway is reaped.  Someone else can only have it if we were away that long.
                await self._drop_socket()
                if asyncio.get_running_loop().time() - started > self.takeover_patience:
                    self._finish(Closed(CloseCode.LOGIN_FAILED, "username_taken"))
                    return
                continue
            except LoginError as exc:
                log.warning("reconnect refused: %s", exc.message)
                await self._drop_socket()
                self._finish(Closed(CloseCode.LOGIN_FAILED, exc.code.value))
                return
            except (OSError, InvalidHandshake, TimeoutError, ChatError, Disconnected) as exc:
                log.info("reconnect to %s failed (%s); retrying", url, type(exc).__name__)
                await self._drop_socket()
                continue
            self.reconnects += 1
            self.state = "connected"
            self._events.put_nowait(StateChanged("connected", url, welcome.recovered))
            return

    async def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        self._ready = False
        if ws is not None:
            await ws.close()

    def _on_socket_closed(self, ws: ClientConnection) -> None:
        """Reader saw its socket close: reconnect, or end the client."""
        if ws is not self._ws:
            return  # an old socket we already replaced
        for hook in list(self._upload_hooks.values()):  # chunks in flight on it will never be answered
            hook(None)
        self._ready = False
        code = ws.close_code
        if self._login is not None and not self._login.done():
            self._login.set_exception(Disconnected(f"connection closed ({code})"))
            return  # whoever is logging in handles it
        if self.state == "connected" and self.reconnect and not self._closing and code not in _FINAL_CLOSES:
            self._reconnector = asyncio.create_task(self._reconnect(), name="chinwag-client-reconnect")
            return
        if self.state in ("connected", "idle"):
            self._finish(Closed(code, ws.close_reason or ""))

    def _finish(self, closed: Closed) -> None:
        if self.closed is not None and self.state == "closed":
            return
        self.state = "closed"
        self.closed = closed
        error = Disconnected(f"connection closed ({closed.code})")
        for request in self._pending.values():
            if not request.future.done():
                request.future.set_exception(error)
        if self._login is not None and not self._login.done():
            self._login.set_exception(error)
        self._events.put_nowait(closed)

    # -- internals: requests and frames -----------------------------------------

    def _ref(self) -> str:
        return f"{self._ref_prefix}-{next(self._refs)}"

    def _write(self, data: bytes) -> None:
        """Write now (synchronously) if logged in; otherwise the next login writes it.

        Before the first login there is nothing to wait for: write, and let the
        server answer ``not_logged_in``.
        """
        if (self._ready or self.state == "idle") and self._ws is not None:
            broadcast((self._ws,), data, text=True)

    async def _request(self, frame: Any, timeout: float | None = None) -> Any:
        if self.closed is not None and self.state == "closed":
            raise Disconnected("client is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request = _Request(f.encode(frame), fut)
        self._pending[frame.ref] = request
        try:
            self._write(request.frame)
            return await asyncio.wait_for(fut, timeout or self.request_timeout)
        finally:
            self._pending.pop(frame.ref, None)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    frame = f.parse_server_frame(raw)
                except Exception:
                    log.warning("unparseable frame from server: %.200r", raw)
                    continue
                self._dispatch(frame)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("client reader failed")
        finally:
            self._on_socket_closed(ws)

    def _dispatch(self, frame: f.ServerFrame | dict[str, Any]) -> None:
        ref = getattr(frame, "ref", None)
        upload = getattr(frame, "upload", None)
        if ref is None and upload is not None and upload in self._upload_hooks:
            self._upload_hooks[upload](frame)  # a reply to a binary chunk: no ref, matched by upload id
            return
        if isinstance(frame, f.Welcome):
            if self._login is not None and not self._login.done():
                self._login.set_result(frame)
            return
        if isinstance(frame, f.Error):
            if ref is not None and ref in self._pending:
                _resolve(self._pending[ref].future, error=frame.to_exception())
            elif self._login is not None and not self._login.done():
                self._login.set_exception(frame.to_exception())
            else:
                self._events.put_nowait(frame)
            return
        if ref is not None:
            if ref in self._pending:
                _resolve(self._pending[ref].future, result=frame)
            return  # a reply to a request already answered or abandoned
        if isinstance(frame, f.Message):
            if not self._first_time(frame):
                return
        elif isinstance(frame, f.Presence):
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
        if isinstance(frame, f.Message | f.Presence | f.PresenceBatch | f.Online | f.GroupEvent | dict):
            self._events.put_nowait(frame)

    def _first_time(self, message: f.Message) -> bool:
        """Advance the stream position; False for a message at or before it (a duplicate)."""
        stream = message.to if message.to[:1] in ("*", "#") else f.STREAM_DM  # "*", "#group" or our inbox
        seen = self.positions.get(stream)
        if seen is not None and id_tuple(message.id) <= id_tuple(seen):
            self.duplicates += 1
            return False
        self.positions[stream] = message.id
        return True


def _resolve(fut: asyncio.Future[Any], result: Any = None, error: ChatError | None = None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
