"""Redis pub/sub channels <-> local sockets.

The router owns one pub/sub connection to Redis.  It subscribes to the
broadcast and presence channels for the gateway's whole life and to one
channel per local user while that user is connected, so Redis sends a gateway
only what its users need.  Incoming publishes are parsed with hiredis straight
from ``data_received`` and handed synchronously to the handler registered for
the channel (which writes to sockets with ``websockets.broadcast``): no task,
no await and no copy per message.

The connection survives Redis: when it drops, :meth:`Router.run` reconnects
with capped, jittered backoff, resubscribes every channel it had, logs each
step, and ``healthy`` tells readiness checks whether subscriptions are in force
and Redis is answering.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio.connection import parse_url

from common.backoff import Backoff
from common.runtime import end_if_cancelled, retrieve
from protocol.errors import Unavailable

log = logging.getLogger("chinwag.router")

Handler = Callable[[bytes], None]


class Subscriptions(Protocol):
    """What logins and the group relay need of a router: :class:`Router`, or ``ClusterRouter`` on a cluster."""

    async def subscribe(self, channel: str, handler: Handler, timeout: float = 5.0) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _PubSubProtocol(asyncio.Protocol):
    def __init__(self, router: Router) -> None:
        self.router = router
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.router.last_data = asyncio.get_running_loop().time()
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError:
                log.error("unparseable data from Redis; reconnecting")
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            self.router._on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Router:
    """Maps Redis channels to local handlers and keeps the subscriptions alive."""

    def __init__(self, redis_url: str, *, keepalive: float = 1.0, ping_timeout: float = 3.0) -> None:
        self._params: dict[str, Any] = dict(parse_url(redis_url))
        self._handlers: dict[bytes, Handler] = {}
        self._waiters: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._proto: _PubSubProtocol | None = None
        self._handshake: deque[asyncio.Future[Any]] = deque()
        self.keepalive = keepalive  # seconds of silence before a PING
        self.ping_timeout = ping_timeout  # seconds a PING may go unanswered before the connection is dropped
        self.live = False
        self.last_data = 0.0
        self.ping_sent: float | None = None  # when the unanswered PING went out (loop time), if any
        self.reconnects = 0
        # Called after a *re*connect has restored every subscription: whatever was
        # published while they were down must be recovered from the streams.
        self.on_resubscribed: Callable[[], None] | None = None
        # Called the moment live subscriptions are lost, so the gateway can start holding
        # live frames *before* any arrive on the next connection (they can share a read
        # with the subscribe confirmations).
        self.on_lost: Callable[[], None] | None = None
        # Called before each published message is handed on: the gateway checks there that its
        # lease can still be trusted (after a stall, buffered messages arrive before any renewal).
        self.before_message: Callable[[], None] | None = None

    # -- public API ---------------------------------------------------------

    async def subscribe(self, channel: str, handler: Handler, timeout: float = 5.0) -> None:
        """Route ``channel`` to ``handler``; returns once Redis confirms the subscription.

        Raises Unavailable when Redis is unreachable; the handler stays registered
        only on success.
        """
        name = channel.encode()
        self._handlers[name] = handler
        try:
            await self._send_and_confirm(b"SUBSCRIBE", name, timeout)
        except BaseException:
            self._handlers.pop(name, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop routing ``channel``; best effort (a lost connection drops it anyway)."""
        name = channel.encode()
        if self._handlers.pop(name, None) is None:
            return
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(_command(b"UNSUBSCRIBE", name))

    def set_handler(self, channel: str, handler: Handler) -> None:
        """Replace the handler of a subscribed channel (no Redis round trip)."""
        self._handlers[channel.encode()] = handler

    @property
    def channels(self) -> int:
        return len(self._handlers)

    async def run(self) -> None:
        """Connect, subscribe everything, and keep doing so forever (cancel to stop)."""
        backoff = Backoff(base=0.05, cap=2.0)
        first = True
        while True:
            end_if_cancelled()  # the handshake's wait_for can swallow a cancel
            try:
                await self._connect_once(first)
                backoff.reset()
                first = False
                await self._watch()
            except asyncio.CancelledError:
                self._close()
                raise
            except (OSError, ConnectionError, TimeoutError, _HandshakeError) as exc:
                delay = backoff.next_delay()
                log.warning("Redis pub/sub unavailable (%s); retrying in %.2fs", _describe(exc), delay)
                self._close()
                await asyncio.sleep(delay)
            except Exception:
                delay = backoff.next_delay()
                log.exception("pub/sub connection failed; retrying in %.2fs", delay)
                self._close()
                await asyncio.sleep(delay)

    # -- internals ----------------------------------------------------------

    async def _connect_once(self, first: bool) -> None:
        loop = asyncio.get_running_loop()
        proto_factory = lambda: _PubSubProtocol(self)  # noqa: E731
        if "path" in self._params:
            _, proto = await asyncio.wait_for(loop.create_unix_connection(proto_factory, self._params["path"]), 3)
        else:
            host = self._params.get("host", "localhost")
            port = int(self._params.get("port", 6379))
            _, proto = await asyncio.wait_for(loop.create_connection(proto_factory, host, port), 3)
        self._proto = proto
        self.last_data = loop.time()
        password = self._params.get("password")
        if password:
            username = self._params.get("username")
            args = [b"AUTH", username.encode(), password.encode()] if username else [b"AUTH", password.encode()]
            if isinstance(await self._handshake_call(proto, args), Exception):
                raise _HandshakeError("AUTH refused")
        # A restarted Redis accepts connections while it is still loading its data;
        # subscribing then has been seen to leave a connection that never delivers.
        # Subscribe only once it answers PING with PONG, not LOADING.
        reply = await self._handshake_call(proto, [b"PING"])
        if isinstance(reply, Exception):
            raise _HandshakeError(f"Redis not ready ({str(reply).split(' ', 1)[0]})")
        names = list(self._handlers)
        if names:
            waiters = [self._expect(name) for name in names]
            assert proto.transport is not None
            proto.transport.write(_command(b"SUBSCRIBE", *names))
            await asyncio.wait_for(asyncio.gather(*waiters), 5)
        self.live = True
        log.info("%s Redis pub/sub (%d channels)", "connected to" if first else "reconnected to", len(names))
        if not first:
            self.reconnects += 1
            if self.on_resubscribed is not None:
                self.on_resubscribed()

    async def _handshake_call(self, proto: _PubSubProtocol, args: list[bytes]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(retrieve)
        self._handshake.append(fut)
        assert proto.transport is not None
        proto.transport.write(_command(*args))
        return await asyncio.wait_for(fut, 3)

    @property
    def healthy(self) -> bool:
        """Subscriptions in force and Redis answering: ``live``, and no PING unanswered past ``keepalive``.

        Redis answers a PING within milliseconds, so one outstanding for a whole
        keepalive interval means Redis is stalled: readiness drops at once
        (within two intervals of the stall), while the connection is only given
        up after ``ping_timeout``.
        """
        if not self.live:
            return False
        sent = self.ping_sent
        if sent is None or self.last_data >= sent:
            return True
        return asyncio.get_running_loop().time() - sent <= self.keepalive

    async def _watch(self) -> None:
        """Return when the connection is lost; PING when quiet to detect a dead peer.

        Deadlines, not elapsed-time guesses: a PING goes out once the connection
        has been silent for ``keepalive``, and the connection is declared dead
        only when *that PING* has gone unanswered for ``ping_timeout``.  A timer
        that wakes a little early merely waits out the rest; one that wakes late
        is never mistaken for a missing answer (the old check measured silence
        since the last data, so an early wake skipped the PING and the next, late,
        one timed out a healthy connection).
        """
        proto = self._proto
        assert proto is not None and proto.transport is not None
        loop = asyncio.get_running_loop()
        self.ping_sent = None
        while True:
            end_if_cancelled()  # a cancel _connect_once's wait_for swallowed ends the watch, not just the next one
            now = loop.time()
            if self.ping_sent is not None and self.last_data >= self.ping_sent:
                self.ping_sent = None  # answered (any data from Redis will do)
            if self.ping_sent is None:
                due = self.last_data + self.keepalive
                if now >= due:
                    proto.transport.write(_command(b"PING"))
                    self.ping_sent = now
            if self.ping_sent is not None:
                expiry = self.ping_sent + self.ping_timeout
                if now >= expiry:
                    proto.transport.close()
                    raise TimeoutError(f"no reply to PING from Redis within {self.ping_timeout:g}s")
                # Look again after an interval (answered by then: the next PING is due from the
                # answer on), or at the expiry, whichever is first.
                due = self.ping_sent + self.keepalive
                if now >= due:
                    due = expiry
                due = min(due, expiry)
            wait = due - now
            done, _ = await asyncio.wait({proto.closed}, timeout=max(wait, 0.001))
            if done:
                raise ConnectionError("Redis closed the pub/sub connection")

    def _close(self) -> None:
        if self.live and self.on_lost is not None:
            self.on_lost()
        self.live = False
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(ConnectionError("pub/sub connection lost"))
        self._waiters.clear()
        while self._handshake:
            fut = self._handshake.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError("pub/sub connection lost"))

    def _expect(self, name: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(retrieve)
        self._waiters.setdefault(name, deque()).append(fut)
        return fut

    async def _send_and_confirm(self, verb: bytes, name: bytes, timeout: float) -> None:
        proto = self._proto
        if not self.live or proto is None or proto.transport is None or proto.transport.is_closing():
            raise Unavailable()
        fut = self._expect(name)
        proto.transport.write(_command(verb, name))
        try:
            await asyncio.wait_for(fut, timeout)
        except (ConnectionError, TimeoutError):
            raise Unavailable() from None

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                guarded(self.before_message, reply[1])
                handler = self._handlers.get(reply[1])
                if handler is not None:
                    try:
                        handler(reply[2])
                    except Exception:
                        log.exception("handler for %r failed", reply[1])
                return
            if kind == b"subscribe":
                waiters = self._waiters.get(reply[1])
                if waiters:
                    fut = waiters.popleft()
                    if not fut.done():
                        fut.set_result(None)
                    if not waiters:
                        del self._waiters[reply[1]]
                return
            if kind in (b"unsubscribe", b"pong"):
                return
        if self._handshake:
            fut = self._handshake.popleft()
            if not fut.done():
                fut.set_result(reply)
            return
        if isinstance(reply, hiredis.ReplyError):
            log.error("Redis pub/sub error: %s", reply)




def guarded(hook: Callable[[], None] | None, channel: bytes | str) -> None:
    """Run ``before_message``; its failure is logged and the message still delivered (a raising hook
    must not end the read loop, nor drop the frame: without the check it is delivered as before)."""
    if hook is None:
        return
    try:
        hook()
    except Exception:
        log.exception("before_message failed for a message on %r; delivering it anyway", channel)


class _HandshakeError(Exception):
    pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
