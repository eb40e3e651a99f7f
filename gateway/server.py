"""The WebSocket gateway (``chinwag-gateway``): accept, login, per-connection loop, shutdown.

Data flows one way: socket -> :mod:`protocol` (parse) -> :mod:`gateway.store`
(one Lua call: store and publish) -> Redis -> :mod:`gateway.router` ->
:class:`gateway.session.Session` -> socket.  The gateway keeps no chat state of
its own beyond its live sockets, so any number of them can run side by side.

Redis pub/sub is at-most-once: what is published while the gateway's
subscriptions are down (a Redis restart, a network blip) never arrives.  So
when the router has resubscribed, the gateway replays the broadcast stream and
each local user's inbox after the last id it wrote, holding live frames back
meanwhile; every message stored while the gateway was cut off still arrives,
once and in order.

Lifecycle (like uvicorn): SIGTERM stops accepting, closes sockets with 1001,
releases every name this gateway holds in one atomic step, and drains for at
most ``shutdown_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import http
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, RedisError, ResponseError
from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Origin

from chinwag import keys
from chinwag.backoff import Backoff
from chinwag.config import Settings
from chinwag.http import Route, serve_http
from chinwag.logs import setup_logging
from chinwag.metrics import CONTENT_TYPE
from chinwag.metrics import Registry as Metrics
from chinwag.redis import connect_redis
from chinwag.runtime import cancel_and_wait, run_service
from presence.registry import Claim, NoLease, Registry, token_hash
from protocol import frames as f
from protocol.errors import (
    AlreadyLoggedIn,
    ChatError,
    CloseCode,
    Internal,
    LoginError,
    NotLoggedIn,
    NotMember,
    RateLimited,
    Unavailable,
    UnknownUser,
    UnsupportedVersion,
    UsernameTaken,
)
from protocol.files import is_chunk
from protocol.names import group_name, id_tuple, login_name, normalize_name, parse_address

from . import lease
from .accounts import Accounts
from .client_ip import ClientAddressConnection, TrustedProxies, client_ip
from .connection import bounded_connection
from .files import FileService
from .group_relay import GroupRelay, cursors_of
from .groups import Groups, GroupState
from .limits import SharedIpLimiter
from .pipeline import AutoPipeline
from .request_rate import RequestLimiter
from .router import Router
from .session import Session
from .store import Replay, Store, frame_id

log = logging.getLogger("chinwag.gateway")

_REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
_control = msgspec.json.Decoder(dict[str, object])
_presence_decoder = msgspec.json.Decoder(f.Presence)
_WS_LOG = logging.getLogger("websockets.server")


def _id_str(mid: tuple[int, int]) -> str:
    return f"{mid[0]}-{mid[1]}"


class Gateway:
    """One gateway node: its sockets, its lease, its subscriptions."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        if not settings.redis_url:
            raise ValueError("the gateway needs a Redis URL")
        self.settings = settings
        self.node_id = settings.node_id
        self.redis = redis or connect_redis(settings.redis_url)
        self.router = Router(
            settings.redis_url, keepalive=settings.redis_ping_interval, ping_timeout=settings.redis_ping_timeout
        )
        self.registry = Registry(self.redis, settings.lease_ttl)
        self.pipeline = AutoPipeline(settings.redis_url)  # the send path: auto-pipelined, see pipeline.py
        self.store = Store(
            self.redis, settings.stream_maxlen, rate=settings.rate_messages, burst=settings.rate_burst,
            pipeline=self.pipeline,
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
        self._by_token: dict[str, Session] = {}  # token hash -> session, for takeover kicks
        self.groups = Groups(self.redis)
        # Local members and their delivery.
        self.relay = GroupRelay(self.router, self.groups, self._spawn, self.store.replay)
        self.requests = RequestLimiter(self.redis, settings.rate_requests, settings.rate_request_burst, self.pipeline)
        self.live: set[ServerConnection] = set()  # logged in and past replay: broadcasts go here
        self.presence_each: set[ServerConnection] = set()  # live, login.presence "each"
        self.presence_batched: set[ServerConnection] = set()  # live, login.presence "batched"
        self._presence_pending: dict[str, str] = {}  # user -> latest status, for the next presence_batch
        self._presence_timer: asyncio.TimerHandle | None = None
        self.server: Server | None = None
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._to_release: dict[tuple[str, str], None] = {}  # (key, token) whose release failed
        self.redis_ok = True
        # Id of the last broadcast fanned out; start() sets it from Redis's clock.
        self.last_broadcast = (int(time.time() * 1000), 0)
        self._broadcast_held: list[bytes] | None = None  # broadcasts arriving during recovery
        self._lease_task: asyncio.Task[Any] | None = None
        self._recovery: asyncio.Task[Any] | None = None
        self._reclaim_pending = False  # the lease was lost: the next recovery re-claims names first
        self._pubsub_losses = 0  # times the pub/sub connection was lost: a catch-up spanning one is stale
        self.http: asyncio.Server | None = None
        self.metrics = Metrics()
        m = self.metrics
        self.m_accepted = m.counter("chinwag_connections_total", "WebSocket connections accepted")
        m.gauge("chinwag_connections", "Logged-in connections on this gateway", lambda: len(self.sessions))
        self.m_logins = m.counter("chinwag_logins_total", "Login attempts by result", ("result",))
        self.m_in = m.counter("chinwag_messages_in_total", "Messages accepted from clients by kind", ("kind",))
        self.m_out = m.counter("chinwag_messages_out_total", "Messages written to clients by kind", ("kind",))
        self.m_errors = m.counter("chinwag_errors_total", "Error frames sent, by code", ("code",))
        self.m_publish = m.histogram("chinwag_redis_publish_seconds", "Duration of the store-and-publish Lua call")
        self.m_replayed = m.counter("chinwag_replayed_messages_total", "Messages replayed from streams", ("reason",))
        self.m_slow = m.counter("chinwag_slow_consumers_total", "Clients cut off for not reading")
        m.gauge(
            "chinwag_redis_reconnects_total", "Reconnects of the pub/sub connection", lambda: self.router.reconnects,
            kind="counter",
        )
        m.gauge("chinwag_redis_pipelined_commands_total", "Send-path commands written to Redis",
                lambda: self.pipeline.commands, kind="counter")
        m.gauge("chinwag_redis_pipelined_writes_total", "Writes that carried them (commands / writes = batching)",
                lambda: self.pipeline.batches, kind="counter")
        m.gauge("chinwag_pubsub_channels", "Redis channels subscribed", lambda: self.router.channels)
        m.gauge("chinwag_ready", "1 when Redis is reachable and subscriptions are live", lambda: float(self.ready))
        self.files = FileService(settings, self.redis, metrics=m, errors=self.m_errors)  # blobs in settings.blob_path

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
        try:
            last: Any = await self.redis.get(keys.LAST_ID)
            self.last_broadcast = id_tuple(last.decode()) if last else (0, 0)
            # A predecessor with this node id (a restart within the lease TTL) may still hold
            # names whose sockets are gone: free them before taking the lease over.
            if freed := await self.registry.release_gateway(self.node_id):
                log.warning("freed %d names left by a previous run of %s", len(freed), self.node_id)
        except _REDIS_ERRORS:
            log.warning("Redis unreachable at start; serving anyway and retrying in the background")
        self._spawn(self.router.run(), "router")
        self._spawn(self.accounts.backfill_skeletons(), "skeleton-backfill")
        self._spawn(self._sweep_buffers(), "buffer-sweep")
        if self.settings.ping_interval > 0:
            self._spawn(self._keepalive(), "keepalive")
        self._spawn(self.relay.run_cursor_flusher(self.settings.group_cursor_interval), "group-cursors")
        self.router.set_handler(keys.BROADCAST_CHANNEL, self._on_broadcast)
        self.router.set_handler(keys.PRESENCE_CHANNEL, self._fan_out)
        self.router.set_handler(keys.gateway_channel(self.node_id), self._on_control)
        self.router.on_resubscribed = self._start_recovery
        self.router.on_lost = self._pubsub_lost
        self._lease_task = self._spawn(self._lease_loop(), "lease")
        self.server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            ssl=self._tls_context(),
            origins=self._origins(),
            process_request=self._http,
            # Bounded writes and control frames (connection.py); a POST gets 405, not a silent close (handshake.py).
            # It also notes the client's address (client_ip.py) before _handle empties the headers.
            create_connection=bounded_connection(
                self.settings.login_write_buffer, self.settings.control_frames, self._on_dropped,
                TrustedProxies.parse(self.settings.trusted_proxies),
            ),
            compression="deflate" if self.settings.compression else None,
            max_size=self.settings.hard_frame_bytes,
            ping_interval=None,  # one _keepalive task pings every socket, not a task per socket
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
            _redacted(self.settings.redis_url or ""),
        )

    @property
    def ready(self) -> bool:
        return self.router.healthy and self.redis_ok and not self.stopping

    def health_routes(self) -> dict[str, Route]:
        def readyz() -> tuple[int, str, bytes]:
            return (200, "text/plain", b"ready\n") if self.ready else (503, "text/plain", b"not ready\n")

        return {
            "/healthz": lambda: (200, "text/plain", b"ok\n"),
            "/readyz": readyz,
            "/metrics": lambda: (200, CONTENT_TYPE, self.metrics.render()),
        }

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
        except _REDIS_ERRORS as exc:
            log.warning("could not release names (%s); the presence service will reap them", type(exc).__name__)
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), self.settings.shutdown_timeout)
            except TimeoutError:
                log.warning("drain timed out after %.1fs", self.settings.shutdown_timeout)
        await cancel_and_wait(self._tasks)
        if self._presence_timer is not None:
            self._presence_timer.cancel()
        self.accounts.close()
        await self.pipeline.aclose()
        await self.redis.aclose()
        log.info("gateway %s stopped", self.node_id)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def _lease_loop(self) -> None:
        """Keep this gateway's lease alive; re-claim names if it was lost."""
        backoff = Backoff(base=0.1, cap=self.settings.lease_ttl / 3)
        registered = False
        while True:
            try:
                if not registered:
                    await self.registry.register_gateway(self.node_id)
                    registered = True
                elif not self._reclaim_pending and not await self.registry.renew_lease(self.node_id):
                    self._lease_lost()
                if self._reclaim_pending and (self._recovery is None or self._recovery.done()):
                    self._start_recovery()  # an earlier recovery gave up before it could re-claim
                await self._retry_releases()
                if not self.redis_ok:
                    log.info("Redis is reachable again")
                self.redis_ok = True
                backoff.reset()
                await asyncio.sleep(self.settings.lease_ttl / 3)
            except asyncio.CancelledError:
                raise
            except _REDIS_ERRORS as exc:
                if self.redis_ok:
                    log.warning("Redis unreachable (%s); answering sends with 'unavailable'", type(exc).__name__)
                self.redis_ok = False
                await asyncio.sleep(backoff.next_delay())

    def _lease_lost(self) -> None:
        """The lease was reaped: hold every session's live frames now, then re-claim and catch up
        in the recovery task (gateway/lease.py explains why in this order)."""
        if self._reclaim_pending:
            return
        log.warning("lease of %s was lost; holding live frames, re-claiming names and catching up", self.node_id)
        self._hold_everything()
        self._reclaim_pending = True
        self._start_recovery()

    def close_session(self, session: Session, code: int, reason: str) -> None:
        """Stop fanning out to a session and close its socket (its handler then logs it out)."""
        self._drop_live(session.ws)
        self._close_later(session.ws, code, reason)

    async def _retry_releases(self) -> None:
        for key, token in list(self._to_release):
            await self.registry.release(key, self.node_id, token)
            del self._to_release[(key, token)]

    # -- HTTP ---------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    def _origins(self) -> list[Origin | None] | None:
        """Browsers must come from an allowed Origin; other clients send none and are let in."""
        if not self.settings.allowed_origins:
            return None
        allowed = [Origin(o.strip()) for o in self.settings.allowed_origins.split(",") if o.strip()]
        return [None, *allowed]

    async def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        if wait := await self.ip_connections.take(_ip(conn)):
            self.m_errors.inc("ip_connections")
            response = _text(http.HTTPStatus.TOO_MANY_REQUESTS, "too many connections from your address\n")
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
        # ``connections`` counts open sockets only, not the one still in its handshake.
        if self.server is not None and len(self.server.connections) >= self.settings.max_connections:
            self.m_errors.inc("max_connections")
            return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        path = request.path.split("?", 1)[0]
        if path.startswith("/files/"):
            return await self.files.http_download(request)
        if path == "/healthz":
            return _text(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.ready:
                return _text(http.HTTPStatus.OK, "ready\n")
            return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        return None

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
            session = await self._login(ws)
            if session is not None:
                await self._serve(session)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection handler crashed")
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if session is not None:
                await self._logout(session)

    async def _login(self, ws: ServerConnection) -> Session | None:
        """Wait for a good login frame; None if the socket closed or was refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.login_timeout
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await ws.close(CloseCode.LOGIN_TIMEOUT, "login timeout")
                return None
            frame: f.ClientFrame | None = None
            try:
                frame = self.parser.parse(raw)
                if not isinstance(frame, f.Login):
                    raise NotLoggedIn()
                if wait := await self.ip_logins.take(_ip(ws)):
                    raise RateLimited("too many logins from your address", retry_after=round(wait, 3))
                return await self._authenticate(ws, frame)
            except ChatError as exc:
                if exc.ref is None and frame is not None:
                    exc.ref = frame.ref
                if not await self._refuse(ws, exc):
                    return None

    async def _refuse(self, ws: ServerConnection, exc: ChatError) -> bool:
        """Answer a failed pre-login frame; False once the socket is closed for it.

        A refused login (bad name or password, name taken, wrong version) closes
        with 4001 and a login while Redis is away with 1013; anything else before
        login is answered and the client may still log in.
        """
        self._reply_error(ws, exc)
        if isinstance(exc, LoginError | UnsupportedVersion | Unavailable | RateLimited):
            self.m_logins.inc(exc.code.value)
        if isinstance(exc, LoginError | UnsupportedVersion):
            await ws.close(CloseCode.LOGIN_FAILED, exc.code.value)
            return False
        if isinstance(exc, Unavailable):
            await ws.close(CloseCode.TRY_AGAIN_LATER, exc.code.value)
            return False
        return True

    async def _authenticate(self, ws: ServerConnection, frame: f.Login) -> Session:
        """Check the password, claim (or take over) the name, then replay and go live.

        Order matters for "no gap, no duplicate": the session holds live frames
        from before the claim, subscribes, reads the streams after the resume
        points, writes the replay, and only then releases what it held,
        dropping anything the replay already carried.
        """
        user = login_name(frame.user)
        key = user.key
        resume = frame.resume or {}
        try:
            token = secrets.token_urlsafe(24)
            name = await self.accounts.authenticate(
                user, frame.password, issued=token_hash(token),
                presented=token_hash(frame.session) if frame.session else None, ip=_ip(ws),
            )
            session = Session(
                ws, key, name, token, token_hash(token), self.settings.max_write_buffer, self._on_slow, self.m_out,
                presence=frame.presence,
            )
            session.last_broadcast = self.last_broadcast  # later fan-outs are held for this session
            losses = self._pubsub_losses
            self.joining.add(session)
            try:
                claim = await self._claim(session, frame.session)
                if claim is None:
                    raise UsernameTaken()
                self.sessions[key] = session
                self._by_token[session.token_hash] = session
                try:
                    await self.router.subscribe(keys.user_channel(key), session.deliver_dm)
                    dm_from = resume.get(f.STREAM_DM, claim.delivered)
                    dms = await self.store.replay(keys.inbox_stream(key), dm_from)
                    bc_from = resume.get(f.STREAM_BROADCAST)
                    broadcasts = await self.store.replay(keys.BROADCAST_STREAM, bc_from) if bc_from else None
                    group_replays = await self._join_groups_at_login(session, resume)
                    owed = await self.relay.owed_at_login(  # groups resumed but left by removal meanwhile
                        key, {group_name(s)[1]: p for s, p in resume.items() if s.startswith("#")},
                        {g for g, *_ in group_replays.values()})
                    invitations = await self.groups.invitations(key)
                except BaseException:
                    self.relay.detach_all(session)
                    self._forget(session)
                    await self._release(session)
                    raise
            except BaseException:
                self.joining.discard(session)
                raise
        except _REDIS_ERRORS as exc:
            raise _redis_failure(exc) from None
        recovered = {f.STREAM_DM: dms.recovered} if f.STREAM_DM in resume else {}
        if broadcasts is not None:
            recovered[f.STREAM_BROADCAST] = broadcasts.recovered
        positions = {f.STREAM_DM: dm_from, f.STREAM_BROADCAST: bc_from or _id_str(session.last_broadcast)}
        for stream, (_, start, replay, resumed) in group_replays.items():
            positions[stream] = start
            if resumed:
                recovered[stream] = replay.recovered
        welcome = f.Welcome(
            user=name, online=claim.online.names, v=f.PROTOCOL_VERSION, session=token, positions=positions,
            node=self.node_id, recovered=recovered or None, online_total=claim.online.total,
            online_next=claim.online.next, ref=frame.ref,
        )
        session.push(f.encode(welcome))
        session.last_dm = id_tuple(dm_from)
        try:
            for _, data in dms.frames:
                await session.replay_dm(data)
            if broadcasts is not None:
                session.last_broadcast = id_tuple(bc_from or "0-0")
                for _, data in broadcasts.frames:
                    await session.replay_broadcast(data)
            for gkey, start, replay, _ in group_replays.values():
                session.last_group[gkey] = max(session.last_group.get(gkey, (0, 0)), id_tuple(start))
                for _, data in replay.frames:
                    await session.replay_group(gkey, data)
            for gkey, frames in owed:
                for data in frames:
                    await session.replay_group(gkey, data, member=True)
            for data in invitations:  # invitations still pending, made while offline or not
                session.push(data)
        except BaseException:  # the socket died mid-replay: it never became a live session
            self.joining.discard(session)
            self.relay.detach_all(session)
            if self._forget(session):
                await self.router.unsubscribe(keys.user_channel(key))
                await self._release(session)
            raise
        self.joining.discard(session)
        if self._pubsub_losses != losses:
            # The subscriptions dropped during this login: its replay may end before what was published
            # while they were down, and a catch-up that began meanwhile skipped it (still joining).
            # Still holding, so no live frame moves the client's positions past that gap: close, and
            # the client resumes from what it got (its next login reads everything after that).
            log.info("pub/sub was lost during the login of %s; closing it so that it resumes", name)
            self.close_session(session, CloseCode.SESSION_LOST, "session lost")
        else:
            session.go_live()
            self._add_live(session)
        self.m_logins.inc("ok")
        self.m_replayed.inc("login", amount=len(dms.frames) + (len(broadcasts.frames) if broadcasts else 0))
        try:  # the inbox is written up to last_dm: the cursor may move there, and with live DMs from now on
            await self.store.settle(key, session.token_hash, session.last_dm_id)
        except _REDIS_ERRORS:
            log.warning("could not record delivery for %s; replay may repeat", name)
        log.info(
            "login %s from %s%s (replayed %d DMs, %d broadcasts%s)", name, _peer(ws),
            " taking over its session" if claim.took_over else "", len(dms.frames),
            len(broadcasts.frames) if broadcasts else 0,
            "" if all(recovered.values()) else "; history no longer reaches the resume point",
        )
        return session

    async def _claim(self, session: Session, takeover: str | None) -> Claim | None:
        page = 0 if session.presence == f.PRESENCE_OFF else self.settings.online_page
        args = (session.key, session.name, self.node_id, session.token, takeover, page)
        try:
            return await self.registry.claim(*args)
        except NoLease:
            self._lease_lost()  # the other sessions' names were freed too: re-claim them and catch up
            await self.registry.register_gateway(self.node_id)
            return await self.registry.claim(*args)

    def _forget(self, session: Session) -> bool:
        """Drop a session from the local maps; True if it still owned its name here."""
        self._by_token.pop(session.token_hash, None)
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
            return True
        return False

    def _on_control(self, data: bytes) -> None:
        """Messages for this gateway alone: a session was taken over elsewhere."""
        try:
            msg = _control.decode(data)
        except msgspec.DecodeError:
            log.error("bad control message: %.200r", data)
            return
        if "part" in msg:  # no longer in a group (removed, or left on another session): stop delivery now
            self.relay.part(str(msg.get("user")), str(msg["part"]), self.sessions,
                            str(msg.get("since", "")), str(msg.get("upto", "")))
            return
        if "notify" in msg:  # e.g. an invitation, for a user who is not (yet) in the group
            member = self.sessions.get(str(msg["notify"]))
            if member is not None:
                member.push(msgspec.json.encode(msg.get("frame")))
            return
        session = self._by_token.get(str(msg.get("token", "")))
        if session is not None and session.key == msg.get("kick"):
            log.info("session of %s taken over by a new connection; closing the old one", session.name)
            self._drop_live(session.ws)
            self.relay.detach_all(session)  # group membership moved with the name
            self._close_later(session.ws, CloseCode.TAKEN_OVER, "session taken over")

    async def _serve(self, session: Session) -> None:
        ws = session.ws
        while True:  # not ``async for``: its generator frame is memory every idle socket would hold
            raw = await ws.recv()  # ConnectionClosed ends the loop (_handle)
            if is_chunk(raw):  # a binary upload chunk (protocol/files.py); answered, never raises
                session.push(await self.files.on_chunk(session, raw))
                continue
            frame: f.ClientFrame | None = None
            try:
                frame = self.parser.parse(raw)
                reply = await self._dispatch(session, frame)
            except ChatError as exc:
                if exc.ref is None and frame is not None:
                    exc.ref = frame.ref
                self._reply_error(ws, exc, session)
                if isinstance(exc, RateLimited):
                    session.limited += 1
                    if session.limited >= self.settings.rate_abuse_limit:
                        log.warning("%s kept sending while rate limited; closing", session.name)
                        await ws.close(CloseCode.RATE_ABUSE, "rate limit abuse")
                        return
            except _REDIS_ERRORS as exc:
                failure = _redis_failure(exc)
                failure.ref = frame.ref if frame is not None else None
                self._reply_error(ws, failure, session)
            else:
                if not isinstance(frame, f.Ping):  # free pings must not reset the abuse count
                    session.limited = 0
                self.m_out.inc("reply")
                session.push(reply)

    async def _dispatch(self, session: Session, frame: f.ClientFrame) -> bytes:
        if isinstance(frame, f.Send):
            address = parse_address(frame.to)
            file_json = await self.files.check_ref(frame.file) if frame.file is not None else b""
            started = time.perf_counter()
            if address.kind == "user":
                stored = await self.store.send_dm(
                    session.name_json, session.key, address.key, frame.body, frame.ref, file_json
                )
                if stored is None:
                    raise UnknownUser(f"no user named {address.name!r}")
                self.m_in.inc("dm")
            elif address.kind == "group":
                stored = await self.store.send_group(
                    session.name_json, session.key, address.key, frame.body, frame.ref, file_json
                )
                self.m_in.inc("group")
            else:
                stored = await self.store.send_broadcast(
                    session.name_json, session.key, frame.body, frame.ref, file_json
                )
                self.m_in.inc("broadcast")
            self.m_publish.observe(time.perf_counter() - started)
            return f.encode(f.Ack(id=stored.id, ts=stored.ts, ref=frame.ref, duplicate=stored.duplicate))
        if isinstance(frame, f.Ping):
            return f.encode(f.Pong(ref=frame.ref))
        await self.requests.take(session.key)  # every other request kind: the user's request budget
        if isinstance(frame, f.Who):
            cap = self.settings.online_page
            page = await self.registry.online_page(frame.cursor, min(frame.limit or cap, cap))
            return f.encode(f.Online(users=page.names, total=page.total, next=page.next, ref=frame.ref))
        if isinstance(frame, f.HistoryRequest):
            address = parse_address(frame.conv)
            if address.kind == "group":
                if not await self.groups.is_member(address.key, session.key):
                    raise NotMember()
                stream = keys.group_stream(address.key)
            elif address.kind == "user":
                stream = keys.dm_stream(session.key, address.key)
            else:
                stream = keys.BROADCAST_STREAM
            messages = await self.store.history(stream, frame.before, frame.limit)
            return f.encode(f.HistoryPage(conv=frame.conv, messages=messages, ref=frame.ref))
        if isinstance(frame, f.Group):
            return await self._group_op(session, frame)
        if isinstance(frame, f.Groups):
            summaries = [f.GroupSummary(g.name, g.owner, g.invite_only) for g in await self.groups.of_user(session.key)]
            return f.encode(f.GroupList(groups=summaries, ref=frame.ref))
        if isinstance(frame, f.Upload):
            return await self.files.start_upload(session, frame)
        raise AlreadyLoggedIn()

    # -- groups -------------------------------------------------------------

    async def _group_op(self, session: Session, frame: f.Group) -> bytes:
        """One ``group`` op.  Membership changes are decided in Redis before delivery changes here;
        gateway/group_relay.py says in what order and why no frame reaches a non-member."""
        gname, gkey = group_name(frame.group)
        op = frame.op
        if op == "create":
            async def create(nonce: str) -> tuple[GroupState, bool]:
                return await self.groups.create(
                    gkey, gname, session.key, session.name, bool(frame.invite_only), nonce), True

            state = await self.relay.join(session, gkey, create)
        elif op == "join":
            state = await self.relay.join(
                session, gkey, lambda nonce: self.groups.join(gkey, session.key, session.name, nonce))
        elif op == "leave":
            await lease.deliver_before_leaving(self, session, gkey)  # what it stored while we were a member
            left = await self.relay.leave(session, gkey, lambda: self.groups.leave(gkey, session.key, session.name))
            self.relay.deliver_owed(session, gkey, left.since, left.upto)  # stored after the read above
            return f.encode(f.GroupInfo(op=op, group=gname, owner="", invite_only=False, members=[], ref=frame.ref))
        elif op in ("invite", "remove"):
            target, tkey = normalize_name((frame.user or "").removeprefix("@"))
            account: Any = await self.redis.hget(keys.account(tkey), "name")
            if account is None:
                raise UnknownUser(f"no user named {target!r}")
            state = await self.groups.owner_op(op, gkey, session.key, session.name, tkey, account.decode())
        elif op == "set":
            state = await self.groups.owner_op(op, gkey, session.key, session.name, invite_only=bool(frame.invite_only))
        else:  # members
            state = await self.groups.state(gkey, session.key)
        return f.encode(f.GroupInfo(op=op, group=state.name, owner=state.owner, invite_only=state.invite_only,
                                    members=state.members, position=state.position, ref=frame.ref))

    async def _join_groups_at_login(
        self, session: Session, resume: dict[str, str]
    ) -> dict[str, tuple[str, str, Replay, bool]]:
        """Subscribe to each of the user's groups, confirm the memberships, then read each stream.

        Returns ``"#Name" -> (group key, start id, replay, resumed)``.  A group
        starts at the client's resume point, else where this user's sessions
        stopped reading it (saved as it advances), else now (nothing old is
        pushed to a fresh member); never before the membership began.  The
        memberships are read again after subscribing, in one step with the
        newest id, so a removal in between is seen either there or as a
        ``part`` that cancels the pending one.
        """
        mine = await self.groups.of_user(session.key)
        if not mine:
            return {}
        wanted = {group_name(stream)[1]: pos for stream, pos in resume.items() if stream.startswith("#")}
        cursors = await self.groups.cursors(session.key)
        await self.relay.open_many(session, [g.key for g in mine])
        try:
            now, since = await self.groups.membership(session.key, [g.key for g in mine])
        except BaseException:
            self.relay.detach_all(session)
            raise
        out: dict[str, tuple[str, str, Replay, bool]] = {}
        for g in mine:
            if g.key not in since:  # left or removed meanwhile
                self.relay.abandon(session, g.key)
                continue
            start = max(wanted.get(g.key) or cursors.get(g.key) or now, since[g.key], key=id_tuple)
            if not self.relay.admit(session, g.key, g.name, start):  # live frames from now on, held
                continue
            replay = await self.store.replay(keys.group_stream(g.key), start)
            # Up to ``now`` only: the membership held then; anything later came (or comes) live,
            # where a removal in between is seen in order.
            upto = id_tuple(now)
            frames = [(rid, data) for rid, data in replay.frames if id_tuple(rid) <= upto]
            out[f"#{g.name}"] = (g.key, start, Replay(frames, replay.recovered), g.key in wanted)
        return out

    async def _logout(self, session: Session) -> None:
        self._drop_live(session.ws)
        self.joining.discard(session)
        owned = self.sessions.get(session.key) is session
        cursors = cursors_of(session)
        self.relay.detach_all(session)
        if owned and cursors:
            try:  # where a later login without resume positions picks each group up
                await self.groups.save_cursors(session.key, cursors)
            except _REDIS_ERRORS:
                log.warning("could not save group positions of %s", session.name)
        if not self._forget(session):  # taken over on this very gateway: the new session owns it all
            return
        await self.router.unsubscribe(keys.user_channel(session.key))
        await self._release(session)
        log.info("logout %s (close code %s)", session.name, session.ws.close_code)

    async def _release(self, session: Session) -> None:
        try:
            await self.registry.release(session.key, self.node_id, session.token)
        except _REDIS_ERRORS:
            self._to_release[(session.key, session.token)] = None

    def _reply_error(self, ws: ServerConnection, exc: ChatError, session: Session | None = None) -> None:
        """The one place a ChatError becomes an error frame on the wire."""
        self.m_errors.inc(exc.code.value)
        _write_error(ws, exc, session)

    # -- fan-out ------------------------------------------------------------

    def _add_live(self, session: Session) -> None:
        self.live.add(session.ws)
        if session.presence == f.PRESENCE_EACH:
            self.presence_each.add(session.ws)
        elif session.presence == f.PRESENCE_BATCHED:
            self.presence_batched.add(session.ws)

    def _drop_live(self, ws: ServerConnection) -> None:
        self.live.discard(ws)
        self.presence_each.discard(ws)
        self.presence_batched.discard(ws)

    def _fan_out(self, frame: bytes) -> None:
        """Presence events: serialised once, written to every socket that wants each one; coalesced
        for ``batched`` logins, which get one ``presence_batch`` per window however busy logins are."""
        if self.presence_each:
            broadcast(self.presence_each, frame, text=True)
            self.m_out.inc("presence", amount=len(self.presence_each))
        if self.presence_batched:
            try:
                event = _presence_decoder.decode(frame)
            except msgspec.DecodeError:
                log.error("unreadable presence event %r", frame[:200])
            else:
                self._presence_pending[event.user] = event.status  # the latest status wins
                if self._presence_timer is None:
                    loop = asyncio.get_running_loop()
                    self._presence_timer = loop.call_later(self.settings.presence_batch, self._flush_presence)
        for session in self.joining:
            if session.presence != f.PRESENCE_OFF:
                session.hold(frame)

    def _flush_presence(self) -> None:
        self._presence_timer = None
        pending, self._presence_pending = self._presence_pending, {}
        if not pending or not self.presence_batched:
            return
        batch = f.PresenceBatch(
            online=[user for user, status in pending.items() if status == "online"],
            offline=[user for user, status in pending.items() if status != "online"],
        )
        broadcast(self.presence_batched, f.encode(batch), text=True)
        self.m_out.inc("presence_batch", amount=len(self.presence_batched))

    def _on_broadcast(self, frame: bytes) -> None:
        if self._broadcast_held is not None:
            self._broadcast_held.append(frame)
        else:
            self._emit_broadcast(frame)

    def _emit_broadcast(self, frame: bytes) -> None:
        mid = frame_id(frame)
        if mid > self.last_broadcast:  # older or equal: already fanned out by replay or live
            self.last_broadcast = mid
            broadcast(self.live, frame, text=True)
            self.m_out.inc("broadcast", amount=len(self.live))
            for session in self.joining:
                session.hold_broadcast(frame)

    def _hold_everything(self) -> None:
        """Subscriptions are gone: from now on live frames wait until the catch-up has run."""
        if self._broadcast_held is None:
            self._broadcast_held = []
        for session in self.sessions.values():
            if session not in self.joining:
                session.start_holding()

    def _pubsub_lost(self) -> None:
        self._pubsub_losses += 1
        self._hold_everything()

    def _start_recovery(self) -> None:
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()  # superseded: its finally releases what it held
        self._recovery = self._spawn(self._recover(), "recover")

    async def _recover(self) -> None:
        """After resubscribing: deliver what was stored while the subscriptions were down.

        Retried with backoff while Redis cannot answer yet (a restarted Redis
        accepts subscriptions while still loading its AOF); live frames are held
        meanwhile, and nothing new can be stored until Redis has loaded.
        """
        self._hold_everything()  # normally already holding since the connection was lost
        losses = self._pubsub_losses
        sessions = [s for s in self.sessions.values() if s not in self.joining]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        backoff = Backoff(base=0.05, cap=1.0)
        try:
            while True:
                try:
                    if self._reclaim_pending:
                        lost = await lease.reclaim(self)
                        self._reclaim_pending = False
                        sessions = [s for s in sessions if s not in lost]
                    recovered = await self._catch_up(sessions)
                except (*_REDIS_ERRORS, NoLease) as exc:  # NoLease: reaped again before the re-claim
                    if loop.time() > deadline:
                        log.error("gave up catching up after reconnect (%s); clients resume on their next login",
                                  type(exc).__name__)
                        break
                    log.info("cannot catch up yet (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                log.info("recovered %d messages stored while pub/sub was down", recovered)
                self.m_replayed.inc("resubscribe", amount=recovered)
                break
        except asyncio.CancelledError:
            raise  # superseded by a newer catch-up, which inherits everything held
        except BaseException:
            if self._pubsub_losses == losses and self.router.live:
                self._release_held(sessions)
            raise
        if self._pubsub_losses != losses or not self.router.live:
            # The subscriptions are down (again): releasing now would let the first live frames
            # after the resubscribe overtake the messages stored meanwhile (their ids would move
            # every position past them).  Keep holding: the resubscribe starts the next catch-up.
            log.info("pub/sub is down again; holding live frames until the next catch-up")
            return
        self._release_held(sessions)
        try:
            await lease.settle(self, sessions)
        except _REDIS_ERRORS as exc:
            log.warning("could not record delivery after catching up (%s); replay may repeat", type(exc).__name__)

    def _release_held(self, sessions: list[Session]) -> None:
        held, self._broadcast_held = self._broadcast_held or [], None
        for frame in held:
            self._emit_broadcast(frame)
        for session in sessions:
            session.go_live()

    async def _catch_up(self, sessions: list[Session]) -> int:
        """Replay broadcasts and each session's DMs after what was last written (id-checked, so re-runnable)."""
        recovered = 0
        for _, frame in (await self.store.replay(keys.BROADCAST_STREAM, _id_str(self.last_broadcast))).frames:
            self._emit_broadcast(frame)
            recovered += 1
        for session in sessions:
            missed = (await self.store.replay(keys.inbox_stream(session.key), session.last_dm_id)).frames
            try:
                for _, frame in missed:
                    await session.replay_dm(frame)
            except ConnectionClosed:
                continue  # that client left; its handler logs it out
            recovered += len(missed)
        # Memberships that ended (or began again) while the subscriptions were down; each member's
        # replay stops at the newest id when its membership was read: later ones arrive live.
        bounds = await self.relay.verify()
        caught_up = set(sessions)  # not sessions still logging in: their login replays their groups
        for gkey, members in list(self.relay.members.items()):
            readers = [s for s in members if s in caught_up]
            if not readers:
                continue
            # (0, 0) is a position like any other (a group joined before anything was stored): from the start.
            since = min(s.last_group.get(gkey, (0, 0)) for s in readers)
            for _, frame in (await self.store.replay(keys.group_stream(gkey), _id_str(since))).frames:
                mid = frame_id(frame)
                for session in readers:
                    if mid > bounds.get(session, (0, 0)):
                        continue
                    try:
                        await session.replay_group(gkey, frame)
                    except ConnectionClosed:
                        continue
                recovered += 1
        page = await self.registry.online_page(None, self.settings.online_page)  # clients page on with `who`
        online = f.encode(f.Online(users=page.names, total=page.total, next=page.next))
        broadcast(self.live, online, text=True)
        return recovered

    async def _keepalive(self) -> None:
        """Ping every open socket each ``ping_interval``; close those whose last ping went unanswered.

        websockets' own keepalive is a task per connection, a kilobyte or more each;
        this is one task and one future per connection between sweeps."""
        interval = self.settings.ping_interval
        waiting: dict[ServerConnection, asyncio.Future[float]] = {}
        backed_up: set[ServerConnection] = set()

        def drop(ws: ServerConnection, what: str) -> None:  # what: a format of (peer, interval)
            log.info(what + "; closing", _peer(ws), interval)
            self._spawn(_cut_off(ws, CloseCode.INTERNAL_ERROR, "keepalive ping timeout"), "cut-off")

        while True:
            await asyncio.sleep(interval)
            for ws, pong in waiting.items():
                if not pong.done() and ws.state is State.OPEN:
                    drop(ws, "no pong from %s within %.0fs")
            waiting.clear()
            if self.server is None:
                continue
            was_backed_up, backed_up = backed_up, set()
            for ws in self.server.connections:
                if ws.paused:  # its writes are backed up: a ping would wait behind them
                    if ws in was_backed_up:
                        drop(ws, "%s has not read for %.0fs")
                    else:
                        backed_up.add(ws)
                    continue
                try:
                    pong = cast("asyncio.Future[float]", await ws.ping())
                except ConnectionClosed:
                    continue
                pong.add_done_callback(_retrieve)
                waiting[ws] = pong

    async def _sweep_buffers(self) -> None:
        """Catch clients that only receive fan-out frames (never checked per write) and stopped reading."""
        while True:
            await asyncio.sleep(0.5)
            limit = self.settings.max_write_buffer
            for session in list(self.sessions.values()):
                transport = session.ws.transport
                if transport is not None and transport.get_write_buffer_size() > limit:
                    self._on_slow(session)

    def _on_slow(self, session: Session) -> None:
        if session.ws in self.live:
            self._drop_live(session.ws)
            log.warning("%s is not reading; closing as slow consumer", session.name)
            self.m_slow.inc()
            self._spawn(_cut_off(session.ws), "cut-off")

    def _on_dropped(self, ws: ServerConnection, reason: str, detail: str) -> None:
        """A socket was aborted for sending without reading or for a ping flood (gateway/connection.py)."""
        log.warning("%s %s; dropped", _peer(ws), detail)
        if reason == "write_bound":
            self.m_slow.inc()
        else:
            self.m_errors.inc(reason)

    def _close_later(self, ws: ServerConnection, code: int, reason: str) -> None:
        self._spawn(ws.close(code, reason), "close")


async def _cut_off(ws: ServerConnection, code: int = CloseCode.SLOW_CONSUMER, reason: str = "slow consumer") -> None:
    """Close with ``code`` if the peer still reads at all, else drop it: its backlog is not ours to keep."""
    try:
        await asyncio.wait_for(ws.close(code, reason), 2)
    except TimeoutError:
        pass
    finally:
        if ws.transport is not None:
            ws.transport.abort()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """A pong that never came fails with ConnectionClosed when its socket goes: that is expected."""
    if not fut.cancelled():
        fut.exception()


def _redis_failure(exc: BaseException) -> ChatError:
    """Redis away (or still loading) is ``unavailable``; Redis refusing a command is our bug."""
    if isinstance(exc, ResponseError) and not isinstance(exc, BusyLoadingError):
        log.error("Redis refused a command", exc_info=exc)
        return Internal()
    return Unavailable()


def _write_error(ws: ServerConnection, exc: ChatError, session: Session | None = None) -> None:
    data = f.encode(f.error_frame(exc, exc.ref))
    if session is not None:
        session.push(data)
    else:
        broadcast((ws,), data, text=True)


def _text(status: http.HTTPStatus, body: str) -> Response:
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body.encode())


def _ip(ws: ServerConnection) -> str:
    """The client's address: the TCP peer's, or a trusted proxy's X-Forwarded-For (gateway/client_ip.py)."""
    return client_ip(ws)


def _peer(ws: ServerConnection) -> str:
    """For logs: ``ip:port``, or ``client via proxy:port`` behind a trusted proxy."""
    addr = ws.remote_address
    peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
    if isinstance(ws, ClientAddressConnection) and ws.proxy:
        return f"{ws.client_ip} via {peer}"
    return peer


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


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
    settings = Settings.from_args(
        "gateway", argv, prog="chinwag-gateway",
        description="Chinwag WebSocket gateway: one stateless node of a chat cluster.",
    )
    setup_logging(settings.log_level, settings.log_json)
    if not settings.redis_url:
        raise SystemExit("chinwag-gateway needs --redis-url (or REDIS_URL)")

    run_service(lambda stop: serve_until(settings, stop))


if __name__ == "__main__":
    main()
