"""One chat client's connection: the asyncio adapter over the sans-I/O client core.

:class:`Connection` owns the I/O that :class:`protocol.client_state.ClientState`
leaves out: it opens the socket (first URL that answers), logs in, runs the
reader task that feeds every frame to the core and carries out what the core
decides (hand an event on, resolve a request's future, finish the login, route
an upload chunk's reply), writes requests (again after a reconnect), and when
the socket drops reconnects by itself with capped, jittered backoff, rotating
through the URLs, until the server refuses the login or the client is closed.
:class:`client.chat.ChatClient` adds the typed requests on top.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import broadcast
from websockets.exceptions import ConnectionClosed, WebSocketException

from common.backoff import Backoff
from common.runtime import cancel_and_wait, end_if_cancelled
from protocol import frames as f
from protocol.client_state import EVENT, LOGIN_FAILED, REPLY, UPLOAD, WELCOMED, ClientState, reconnects_after
from protocol.errors import ChatError, CloseCode, LoginError, UsernameTaken

from .errors import ClientError, ConnectFailed, Disconnected, RequestTimeout, connect_failed

__all__ = ["Closed", "Connection", "Event", "StateChanged"]

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


async def events_until_closed(queue: asyncio.Queue[Event]) -> AsyncIterator[Event]:
    """Every event put on ``queue``, ending after the :class:`Closed` event (the one that is always
    last): what :meth:`Connection.events` iterates, and anything standing in for a client."""
    while True:
        event = await queue.get()
        yield event
        if isinstance(event, Closed):
            return


class Connection:
    """The socket(s) of one client, its login and reconnects; decisions are the core's (``self.core``).

    One thing: the I/O of one logical connection, whose parts (open, login,
    reader, reconnect, request writes) share the current socket and the
    ready/closing state and must change together; every decision already lives
    in the sans-I/O core, and typed requests in :class:`client.chat.ChatClient`.
    """

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

    # -- connection ---------------------------------------------------------

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
        if self._reconnector is not None:  # bounded: a reconnect stuck in a library call cannot hang close()
            await cancel_and_wait([self._reconnector])
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._finish(Closed(CloseCode.NORMAL, "closed by client"))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.closed is None and self.state in ("idle", "connected")

    # -- raw frames -----------------------------------------------------------

    async def send_raw(self, data: str | bytes) -> None:
        """Send arbitrary data (for tests and tools that speak the protocol by hand)."""
        if self._ws is None:
            raise Disconnected("not connected")
        await self._ws.send(data)

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
        return self.core.watch_upload(upload, hook)

    # -- events -------------------------------------------------------------

    def events(self) -> AsyncIterator[Event]:
        """Every pushed event, ending after the :class:`Closed` event."""
        return events_until_closed(self._events)

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
            end_if_cancelled()  # websockets' open and login run under wait_for, which can swallow a cancel
            await asyncio.sleep(backoff.next_delay())
            self._url_index += 1
            url = self.urls[self._url_index % len(self.urls)]
            try:
                await self._open_socket(url)
                welcome = await self._do_login(self.core.user or "", self._password or "")
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
