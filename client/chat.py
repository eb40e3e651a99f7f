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

What the client knows and decides (positions, dedupe, matching replies to
requests, who is online, group membership) is the sans-I/O
:class:`protocol.client_state.ClientState`; this class is its asyncio adapter:
sockets, reconnects with backoff, the reader task, futures and timeouts.
Failures to get an answer raise the :class:`client.errors.ClientError` tree.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import broadcast
from websockets.exceptions import ConnectionClosed, WebSocketException

from chinwag.backoff import Backoff
from protocol import frames as f
from protocol.client_state import EVENT, LOGIN_FAILED, REPLY, UPLOAD, WELCOMED, ClientState, reconnects_after
from protocol.errors import ChatError, CloseCode, LoginError, RateLimited, Unavailable, UsernameTaken
from protocol.files import FileRef

from .errors import ClientError, ConnectFailed, Disconnected, RequestTimeout, connect_failed

__all__ = ["ChatClient", "ClientError", "Closed", "Disconnected", "Event", "StateChanged"]

log = logging.getLogger("chinwag.client")

# What opening a socket raises when it fails (wrapped into ConnectFailed).
_CONNECT_ERRORS = (OSError, WebSocketException, TimeoutError)


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
        # Positions, dedupe, requests by ref, who is online, groups: decided there, without I/O.
        self.core: ClientState[asyncio.Future[Any]] = ClientState(secrets.token_hex(4))
        self.node: str | None = None
        self.url: str | None = None
        self.state = "idle"
        self.reconnects = 0
        self.closed: Closed | None = None
        self._password: str | None = None
        self._ws: ClientConnection | None = None
        self._ready = False  # logged in on the current socket: requests may be written
        self._reader: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._login: asyncio.Future[f.Welcome] | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._closing = False
        self._url_index = 0

    # -- the core's state, as attributes ----------------------------------------

    @property
    def user(self) -> str | None:
        return self.core.user

    @property
    def welcome(self) -> f.Welcome | None:
        return self.core.welcome

    @property
    def session(self) -> str | None:
        """Token that takes our name back after a drop (settable: a new client can take a session over)."""
        return self.core.session

    @session.setter
    def session(self, token: str | None) -> None:
        self.core.session = token

    @property
    def positions(self) -> dict[str, str]:
        """Stream -> last message id seen (settable: a new client can resume where another stopped)."""
        return self.core.positions

    @positions.setter
    def positions(self, positions: dict[str, str]) -> None:
        self.core.positions = positions

    @property
    def online(self) -> set[str]:
        """Who is online: everyone, or, when the server capped its list (``online_total`` is not None),
        its first page plus everyone seen coming online since.  :meth:`who` pages through everyone."""
        return self.core.online

    @property
    def online_total(self) -> int | None:
        return self.core.online_total

    @property
    def duplicates(self) -> int:
        return self.core.duplicates

    # -- connection ---------------------------------------------------------

    @classmethod
    async def open(cls, urls: str | Sequence[str], user: str, password: str, **kwargs: Any) -> ChatClient:
        """Connect (first reachable URL) and log in; raises the login's ChatError, or a ClientError."""
        client = cls(urls, **kwargs)
        await client.connect()
        try:
            await client.login(user, password)
        except BaseException:
            await client.close()
            raise
        return client

    async def connect(self) -> None:
        """Open a socket to the first URL that answers (each tried once); ConnectFailed if none does."""
        error: ConnectFailed | None = None
        for _ in range(len(self.urls)):
            url = self.urls[self._url_index % len(self.urls)]
            try:
                await self._open_socket(url)
                return
            except ConnectFailed as exc:
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
        frame = f.Send(to=to, body=body, file=file, ref=ref or self.core.next_ref())
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
        reply = await self._request(f.Who(cursor=cursor, limit=limit, ref=self.core.next_ref()))
        assert isinstance(reply, f.Online)
        return reply

    async def history(self, conv: str, before: str | None = None, limit: int = 50) -> list[f.Message]:
        reply = await self._request(f.HistoryRequest(conv=conv, before=before, limit=limit,
                                                     ref=self.core.next_ref()))
        assert isinstance(reply, f.History)
        return reply.messages

    async def ping(self) -> None:
        await self._request(f.Ping(ref=self.core.next_ref()))

    async def group(
        self, op: str, group: str, *, user: str | None = None, invite_only: bool | None = None
    ) -> f.GroupInfo:
        """A group operation: create, join, leave, members, invite, remove, set (see docs/protocol.md)."""
        frame = f.Group(op=op, group=group.removeprefix("#"), user=user, invite_only=invite_only,
                        ref=self.core.next_ref())
        reply = await self._request(frame)
        assert isinstance(reply, f.GroupInfo)
        return reply

    async def groups(self) -> list[f.GroupSummary]:
        """The groups this user is a member of."""
        reply = await self._request(f.Groups(ref=self.core.next_ref()))
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
            frame.ref = self.core.next_ref()
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
        uploads = self.core.uploads
        uploads[upload] = hook

        def unhook() -> None:
            if uploads.get(upload) is hook:
                del uploads[upload]

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
        try:
            ws = await connect(url, open_timeout=self.open_timeout, compression=None, max_size=2**22, **options)
        except _CONNECT_ERRORS as exc:
            raise connect_failed(url, exc) from exc
        self._ws = ws
        self._ready = False
        self.url = url
        self.closed = None
        self._reader = asyncio.create_task(self._read(ws), name="chinwag-client-reader")

    async def _do_login(self, user: str, password: str) -> f.Welcome:
        """Log in on the current socket, resuming where we were if we were anywhere.

        The reader applies the welcome (the core merges it) and writes the
        requests still unanswered before it resolves ``_login``.
        """
        assert self._ws is not None
        self._login = asyncio.get_running_loop().create_future()
        login = self.core.login(user, password, self.presence)
        try:
            try:
                await self._ws.send(f.encode(login), text=True)
            except ConnectionClosed as exc:
                raise Disconnected(str(exc)) from None
            try:
                welcome = await asyncio.wait_for(self._login, self.request_timeout)  # cancelled on timeout
            except TimeoutError:
                raise RequestTimeout(f"no welcome within {self.request_timeout:g}s") from None
        except BaseException:
            self.core.login_abandoned()
            raise
        self.node = welcome.node
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
            except (ClientError, ChatError) as exc:
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
        for hook in list(self.core.uploads.values()):  # chunks in flight on it will never be answered
            hook(None)
        self._ready = False
        code = ws.close_code
        if self._login is not None and not self._login.done():
            self._login.set_exception(Disconnected(f"connection closed ({code})"))
            return  # whoever is logging in handles it
        if self.state == "connected" and self.reconnect and not self._closing and reconnects_after(code):
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
        for request in self.core.pending.values():
            if not request.waiter.done():
                request.waiter.set_exception(error)
        if self._login is not None and not self._login.done():
            self._login.set_exception(error)
        self._events.put_nowait(closed)

    # -- internals: requests and frames -----------------------------------------

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
        ref = frame.ref
        data = self.core.request(frame, fut)
        try:
            self._write(data)
            return await asyncio.wait_for(fut, timeout or self.request_timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                raise  # a TimeoutError the reply itself carried
            raise RequestTimeout(f"no reply within {timeout or self.request_timeout:g}s") from None
        finally:
            self.core.finished(ref)

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
        """Carry out what the core decided about a frame."""
        outcome = self.core.receive(frame)
        if outcome == EVENT:  # the common cases first: this runs for every frame
            self._events.put_nowait(frame)  # type: ignore[arg-type]
        elif outcome == REPLY:
            fut = self.core.pending[frame.ref].waiter  # type: ignore[union-attr,index]
            if not fut.done():
                if isinstance(frame, f.Error):
                    fut.set_exception(frame.to_exception())
                else:
                    fut.set_result(frame)
        elif outcome == WELCOMED:
            assert isinstance(frame, f.Welcome)
            if self._login is not None and not self._login.done():
                self._ready = True
                for data in self.core.resend():  # unanswered on the old socket: again, same ref
                    self._write(data)
                self._login.set_result(frame)
        elif outcome == LOGIN_FAILED:
            assert isinstance(frame, f.Error)
            if self._login is not None and not self._login.done():
                self._login.set_exception(frame.to_exception())
        elif outcome == UPLOAD:
            self.core.uploads[frame.upload](frame)  # type: ignore[union-attr,index]
