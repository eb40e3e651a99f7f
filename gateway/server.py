"""The WebSocket gateway (``chinwag-gateway``): build the parts, accept, per-connection loop, shutdown.

Data flows one way: socket -> :mod:`protocol` (parse) -> :mod:`gateway.store`
(one Lua call: store and publish) -> Redis -> :mod:`gateway.router` ->
:class:`gateway.session.Session` -> socket.  The gateway keeps no chat state of
its own beyond its live sockets, so any number of them can run side by side.

``Gateway`` wires the concerns, each in a module of its own (docs/architecture.md):
admission.py (the handshake: per-IP limits, TLS, origins, probes), dispatch.py
(a logged-in connection's requests), fanout.py (the live set and presence),
keepalive.py (pings, slow consumers), group_relay.py (group delivery), login.py
(login and logout), recovery.py (held frames and the catch-up after a pub/sub
outage), lease.py (the lease loop and re-claiming names after a lost lease).
What stays here is the lifecycle: start, accept, the per-connection loop, and
the SIGTERM drain.

Lifecycle (like uvicorn): SIGTERM stops accepting, closes sockets with 1001,
releases every name this gateway holds in one atomic step, and drains for at
most ``shutdown_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from common import keys
from common.config import Settings
from common.http import Route, health_routes, serve_http
from common.layout import require_new_layout
from common.redis import REDIS_ERRORS, RedisClient, connect_any, redacted_url
from common.runtime import cancel_and_wait, service_main
from presence.registry import Registry
from protocol import control
from protocol import frames as f
from protocol.errors import CloseCode
from protocol.names import id_tuple

from . import lease
from .accounts import Accounts
from .admission import Admission
from .client_ip import TrustedProxies, peer
from .connection import bounded_connection
from .dispatch import Dispatcher
from .fanout import Fanout
from .files import FileService
from .group_cursors import run_cursor_flusher
from .group_relay import GroupRelay
from .groups import Groups
from .keepalive import cut_off, keepalive, sweep_buffers
from .limits import SharedIpLimiter
from .login import Logins
from .metrics import GatewayMetrics
from .recovery import Recovery
from .request_rate import RequestLimiter
from .session import Session
from .store import Store
from .transport import check_durability, make_pipeline, make_router, replicas_for

log = logging.getLogger("chinwag.gateway")

_WS_LOG = logging.getLogger("websockets.server")


class Gateway:
    """One gateway node: builds its parts and wires their callbacks; owns its sockets' lifecycle."""

    def __init__(self, settings: Settings, redis: RedisClient | None = None) -> None:
        if not settings.redis_url:
            raise ValueError("the gateway needs a Redis URL")
        self.settings = settings
        self.node_id = settings.node_id
        # One Redis or a Redis Cluster, by the URL's scheme (common.redis.connect_any).
        self.redis = redis or connect_any(settings.redis_url)
        self.router = make_router(settings, self.redis)  # one pub/sub connection, or sharded on a cluster
        self.registry = Registry(self.redis, settings.lease_ttl)
        self.pipeline = make_pipeline(settings, self.redis)  # the send path: auto-pipelined, see pipeline.py
        self.store = Store(
            self.redis, settings.stream_maxlen, rate=settings.rate_messages, burst=settings.rate_burst,
            pipeline=self.pipeline, replicas=replicas_for(settings),
        )
        self.accounts = Accounts(
            self.redis,
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            max_failures=settings.login_failures,
            lockout_seconds=settings.lockout_seconds,
            token_seconds=settings.login_token_days * 86_400,
        )
        # Per-IP limits in Redis, shared by the cluster; this gateway's own buckets while Redis is away.
        self.ip_connections = SharedIpLimiter(
            self.redis, self.pipeline, keys.ip_connections, settings.ip_connections, int(5 * settings.ip_connections),
            healthy=lambda: self.ready,
        )
        self.ip_logins = SharedIpLimiter(
            self.redis, self.pipeline, keys.ip_logins, settings.ip_logins, int(5 * settings.ip_logins),
            healthy=lambda: self.ready,
        )
        self.parser = f.FrameParser(f.Limits(settings.max_frame_bytes, settings.max_body_chars))
        self.sessions: dict[str, Session] = {}  # name key -> logged-in session
        self.joining: set[Session] = set()  # claimed but welcome/replay not yet sent
        self.groups = Groups(self.redis)
        # Local members and their delivery.
        self.relay = GroupRelay(self.router, self.groups, self.spawn, self.store.replay)
        self.requests = RequestLimiter(self.redis, settings.rate_requests, settings.rate_request_burst, self.pipeline)
        self.server: Server | None = None
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.redis_ok = True
        self._lease_task: asyncio.Task[Any] | None = None
        self.http: asyncio.Server | None = None
        gm = GatewayMetrics.create(
            connections=lambda: len(self.sessions), reconnects=lambda: self.router.reconnects,
            pipelined_commands=lambda: self.pipeline.commands, pipelined_writes=lambda: self.pipeline.batches,
            channels=lambda: self.router.channels, ready=lambda: float(self.ready),
        )
        self.metrics, m = gm.registry, gm.registry
        self.m_accepted, self.m_logins, self.m_in, self.m_out = gm.accepted, gm.logins, gm.messages_in, gm.messages_out
        self.m_errors, self.m_publish, self.m_replayed, self.m_slow = gm.errors, gm.publish, gm.replayed, gm.slow
        self.files = FileService(settings, self.redis, metrics=m, errors=self.m_errors)  # blobs in settings.blob_path
        # The concerns the gateway wires together, each in its own module.
        self.fanout = Fanout(settings.presence_batch, lambda: self.joining, self.m_out, settings.presence_batch_writes)
        self.dispatcher = Dispatcher(
            settings, self.parser, self.redis, self.store, self.registry, self.groups, self.relay, self.files,
            self.requests, self.m_in, self.m_out, self.m_errors, self.m_publish,
        )
        self.recovery = Recovery(self)  # held frames and the catch-up after a pub/sub outage or lost lease
        self.logins = Logins(self)  # login (claim, replay, welcome) and logout
        self.admission = Admission(
            settings, self.ip_connections, lambda: self.server, self.files.http_download, self.health_routes,
            self.m_errors,
        )

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start serving; on failure (say, the port is taken) undo everything and raise."""
        try:
            await self._start()
        except BaseException:
            await self._abort()
            raise

    async def _abort(self) -> None:
        await cancel_and_wait(self._tasks)
        if self.server is not None:
            self.server.close()
        if self.http is not None:
            self.http.close()
        self.accounts.close()
        await self.pipeline.aclose()
        await self.redis.aclose()

    async def _start(self) -> None:
        await check_durability(self.settings, self.redis)  # --durability replica needs a replica to wait for
        try:
            await require_new_layout(self.redis)  # the previous release's data: chinwag-migrate first (OldLayout)
            last: Any = await self.redis.get(keys.BROADCAST_CLOCK)  # the last broadcast id handed out
            self.recovery.last_broadcast = id_tuple(last.decode()) if last else (0, 0)
            # A predecessor with this node id (a restart within the lease TTL) may still hold
            # names whose sockets are gone: free them before taking the lease over.
            if freed := await self.registry.release_gateway(self.node_id):
                log.warning("freed %d names left by a previous run of %s", len(freed), self.node_id)
        except REDIS_ERRORS:
            log.warning("Redis unreachable at start; serving anyway and retrying in the background")
        self.spawn(self.router.run(), "router")
        self.spawn(self.accounts.backfill_skeletons(), "skeleton-backfill")
        self.spawn(sweep_buffers(self.settings.max_write_buffer, self.sessions.values, self.on_slow), "buffer-sweep")
        if self.settings.ping_interval > 0:
            self.spawn(keepalive(self.settings.ping_interval, self._connections, self.spawn), "keepalive")
        self.spawn(run_cursor_flusher(self.groups, self.relay.members, self.settings.group_cursor_interval),
                   "group-cursors")
        self.router.set_handler(keys.BROADCAST_CHANNEL, self.recovery.on_broadcast)
        for channel in keys.PRESENCE_CHANNELS:  # every partition (one on a single Redis)
            self.router.set_handler(channel, self.fanout.on_presence)
        self.router.set_handler(keys.gateway_channel(self.node_id), self._on_control)
        self.router.on_resubscribed = self.recovery.start
        self.router.on_lost = self.recovery.pubsub_lost
        self.router.before_message = self.recovery.check_lease
        self._lease_task = self.spawn(lease.run(self), "lease")
        self.server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            ssl=self.admission.tls_context(),
            origins=self.admission.origins(),
            process_request=self.admission.process_request,
            # Bounded writes and control frames (connection.py); a POST gets 405, not a silent close (handshake.py).
            # It also notes the client's address (client_ip.py) before _handle empties the headers.
            create_connection=bounded_connection(
                self.settings.login_write_buffer, self.settings.control_frames, self._on_dropped,
                TrustedProxies.parse(self.settings.trusted_proxies),
            ),
            compression="deflate" if self.settings.compression else None,
            max_size=self.settings.hard_frame_bytes,
            ping_interval=None,  # one keepalive task (keepalive.py) pings every socket, not a task per socket
            open_timeout=10,
            close_timeout=5,
        )
        http_port = self.settings.http_port_for("gateway")
        if http_port:
            self.http = await serve_http(self.settings.host, http_port, self.health_routes())
        log.info(
            "gateway %s listening on ws://%s:%d (redis %s)",
            self.node_id,
            self.settings.host,
            self.port,
            redacted_url(self.settings.redis_url),
        )

    @property
    def ready(self) -> bool:
        return self.router.healthy and self.redis_ok and not self.stopping

    def health_routes(self) -> dict[str, Route]:
        return health_routes(lambda: self.ready, self.metrics.render)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, close sockets with 1001, release names, drain."""
        if self.stopping:
            return
        self.stopping = True
        log.info("gateway %s shutting down: closing %d connections", self.node_id, len(self.sessions))
        if self._lease_task is not None:  # or it would re-register and re-claim what we release
            await cancel_and_wait([self._lease_task])
        if self.server is not None:
            self.server.close(close_connections=True)
        if self.http is not None:
            self.http.close()
        try:
            freed = await asyncio.wait_for(self.registry.release_gateway(self.node_id), 3)
            log.info("released %d names", len(freed))
        except REDIS_ERRORS as exc:
            log.warning("could not release names (%s); the presence service will reap them", type(exc).__name__)
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), self.settings.shutdown_timeout)
            except TimeoutError:
                log.warning("drain timed out after %.1fs", self.settings.shutdown_timeout)
        await cancel_and_wait(self._tasks)
        self.fanout.close()
        self.accounts.close()
        await self.pipeline.aclose()
        await self.redis.aclose()
        log.info("gateway %s stopped", self.node_id)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def close_session(self, session: Session, code: int, reason: str) -> None:
        """Stop fanning out to a session and close its socket (its handler then logs it out)."""
        self.fanout.drop(session.ws)
        self._close_later(session.ws, code, reason)

    # -- connections --------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.m_accepted.inc()
        # The handshake's headers (some 3 KiB) are never read again, but websockets'
        # frame parser keeps the request alive: at 10,000 idle connections they would be
        # a fifth of the memory.  Emptied, they are a few bytes.
        for message in (ws.request, ws.response):
            if message is not None:
                message.headers.clear()
        # Likewise the per-connection LoggerAdapter websockets wraps its logger in.
        ws.logger = ws.protocol.logger = _WS_LOG
        session: Session | None = None
        try:
            if self.stopping:
                await ws.close(CloseCode.GOING_AWAY, "shutting down")
                return
            session = await self.logins.login(ws)
            if session is not None:
                await self.dispatcher.serve(session)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection handler crashed")
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if session is not None:
                await self.logins.logout(session)

    def _on_control(self, data: bytes) -> None:
        """Messages for this gateway alone: a session was taken over elsewhere."""
        try:
            msg = control.decode(data)
        except msgspec.DecodeError:  # ValidationError included
            log.error("bad control message: %.200r", data)
            return
        if isinstance(msg, control.Part):  # no longer in a group (removed, or left on another session)
            self.relay.part(msg.user, msg.group, self.sessions, msg.since, msg.upto)
            return
        if isinstance(msg, control.Notify):  # e.g. an invitation, for a user who is not (yet) in the group
            member = self.sessions.get(msg.user)
            if member is not None:
                member.push(bytes(msg.frame))
            return
        session = self.logins.by_token.get(msg.token)
        if session is not None and session.key == msg.user:
            log.info("session of %s taken over by a new connection; closing the old one", session.name)
            self.fanout.drop(session.ws)
            self.relay.detach_all(session)  # group membership moved with the name
            self._close_later(session.ws, CloseCode.TAKEN_OVER, "session taken over")

    def on_slow(self, session: Session) -> None:
        if session.ws in self.fanout.live:
            self.fanout.drop(session.ws)
            log.warning("%s is not reading; closing as slow consumer", session.name)
            self.m_slow.inc()
            self.spawn(cut_off(session.ws), "cut-off")

    def _on_dropped(self, ws: ServerConnection, reason: str, detail: str) -> None:
        """A socket was aborted for sending without reading or for a ping flood (gateway/connection.py)."""
        log.warning("%s %s; dropped", peer(ws), detail)
        if reason == "write_bound":
            self.m_slow.inc()
        else:
            self.m_errors.inc(reason)

    def _connections(self) -> list[ServerConnection]:
        return list(self.server.connections) if self.server is not None else []

    def _close_later(self, ws: ServerConnection, code: int, reason: str) -> None:
        self.spawn(ws.close(code, reason), "close")


async def serve_until(settings: Settings, stop: asyncio.Event, ready: Callable[[Gateway], None] | None = None) -> None:
    """Run a gateway until ``stop`` is set (the embedded server shares this)."""
    gateway = Gateway(settings)
    await gateway.start()
    if ready is not None:
        ready(gateway)
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main(argv: list[str] | None = None) -> None:
    service_main("gateway", argv, "Chinwag WebSocket gateway: one stateless node of a chat cluster.", serve_until)


if __name__ == "__main__":
    main()
