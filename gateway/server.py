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

``Gateway`` wires the concerns, each in a module of its own (docs/architecture.md):
admission.py (the handshake: per-IP limits, TLS, origins, probes), dispatch.py
(a logged-in connection's requests), fanout.py (the live set and presence),
keepalive.py (pings, slow consumers), group_relay.py (group delivery), and here
the login, the lease, and recovery after a pub/sub outage.

Lifecycle (like uvicorn): SIGTERM stops accepting, closes sockets with 1001,
releases every name this gateway holds in one atomic step, and drains for at
most ``shutdown_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from common import keys
from common.backoff import Backoff
from common.config import Settings
from common.http import Route, health_routes, serve_http
from common.redis import REDIS_ERRORS, connect_redis, redacted_url
from common.runtime import cancel_and_wait, service_main
from presence.registry import Claim, NoLease, Registry, token_hash
from protocol import control
from protocol import frames as f
from protocol.errors import (
    ChatError,
    CloseCode,
    LoginError,
    NotLoggedIn,
    RateLimited,
    Unavailable,
    UnsupportedVersion,
    UsernameTaken,
)
from protocol.frames import frame_id
from protocol.names import group_name, id_tuple, login_name

from . import lease
from .accounts import Accounts
from .admission import Admission
from .client_ip import TrustedProxies, client_ip, peer
from .connection import bounded_connection
from .dispatch import Dispatcher, redis_failure, reply_error
from .fanout import Fanout
from .files import FileService
from .group_relay import GroupRelay, cursors_of, join_groups_at_login
from .groups import Groups
from .keepalive import cut_off, keepalive, sweep_buffers
from .limits import SharedIpLimiter
from .metrics import GatewayMetrics
from .pipeline import AutoPipeline
from .request_rate import RequestLimiter
from .router import Router
from .session import Session
from .store import Store

log = logging.getLogger("chinwag.gateway")

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
        self._lease_losses = 0  # times the lease was found lost: a login spanning one may have missed DMs
        self._lease_fresh_until: float | None = None  # loop time until which the last renewal vouches
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
        self.fanout = Fanout(settings.presence_batch, lambda: self.joining, self.m_out)
        self.dispatcher = Dispatcher(
            settings, self.parser, self.redis, self.store, self.registry, self.groups, self.relay, self.files,
            self.requests, self.m_in, self.m_out, self.m_errors, self.m_publish,
        )
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
        try:
            last: Any = await self.redis.get(keys.LAST_ID)
            self.last_broadcast = id_tuple(last.decode()) if last else (0, 0)
            # A predecessor with this node id (a restart within the lease TTL) may still hold
            # names whose sockets are gone: free them before taking the lease over.
            if freed := await self.registry.release_gateway(self.node_id):
                log.warning("freed %d names left by a previous run of %s", len(freed), self.node_id)
        except REDIS_ERRORS:
            log.warning("Redis unreachable at start; serving anyway and retrying in the background")
        self._spawn(self.router.run(), "router")
        self._spawn(self.accounts.backfill_skeletons(), "skeleton-backfill")
        self._spawn(sweep_buffers(self.settings.max_write_buffer, self.sessions.values, self._on_slow),
                    "buffer-sweep")
        if self.settings.ping_interval > 0:
            self._spawn(keepalive(self.settings.ping_interval, self._connections, self._spawn), "keepalive")
        self._spawn(self.relay.run_cursor_flusher(self.settings.group_cursor_interval), "group-cursors")
        self.router.set_handler(keys.BROADCAST_CHANNEL, self._on_broadcast)
        self.router.set_handler(keys.PRESENCE_CHANNEL, self.fanout.on_presence)
        self.router.set_handler(keys.gateway_channel(self.node_id), self._on_control)
        self.router.on_resubscribed = self._start_recovery
        self.router.on_lost = self._pubsub_lost
        self.router.before_message = self._check_lease
        self._lease_task = self._spawn(self._lease_loop(), "lease")
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
                sent = asyncio.get_running_loop().time()
                if not registered:
                    await self.registry.register_gateway(self.node_id)
                    registered = True
                    self.lease_renewed(sent)
                elif not self._reclaim_pending:
                    if await self.registry.renew_lease(self.node_id):
                        self.lease_renewed(sent)
                    else:
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
            except REDIS_ERRORS as exc:
                if self.redis_ok:
                    log.warning("Redis unreachable (%s); answering sends with 'unavailable'", type(exc).__name__)
                self.redis_ok = False
                await asyncio.sleep(backoff.next_delay())

    def lease_renewed(self, sent: float) -> None:
        """The lease was registered or renewed by a request sent at loop time ``sent``."""
        self._lease_fresh_until = sent + self.settings.lease_ttl

    def _check_lease(self) -> None:
        """Before a live frame is handed on: if no renewal vouches for the lease any more (this process
        was stalled, or cut off from Redis, for longer than the lease), it may have been reaped and a
        name freed meanwhile, so a frame published after that could move a client past a DM stored
        while the name was free.  Treat the lease as lost first: hold, re-claim, catch up (a name that
        was not reaped is simply kept)."""
        if self._reclaim_pending or self._lease_fresh_until is None:
            return
        if asyncio.get_running_loop().time() > self._lease_fresh_until:
            log.warning("no lease renewal of %s for longer than the lease; checking it before delivering",
                        self.node_id)
            self._lease_lost()

    def _lease_lost(self) -> None:
        """The lease was reaped: hold every session's live frames now, then re-claim and catch up
        in the recovery task (gateway/lease.py explains why in this order)."""
        if self._reclaim_pending:
            return
        log.warning("lease of %s was lost; holding live frames, re-claiming names and catching up", self.node_id)
        self._lease_losses += 1
        self._hold_everything()
        self._reclaim_pending = True
        self._start_recovery()

    def close_session(self, session: Session, code: int, reason: str) -> None:
        """Stop fanning out to a session and close its socket (its handler then logs it out)."""
        self.fanout.drop(session.ws)
        self._close_later(session.ws, code, reason)

    async def _retry_releases(self) -> None:
        for key, token in list(self._to_release):
            await self.registry.release(key, self.node_id, token)
            del self._to_release[(key, token)]

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
                await self.dispatcher.serve(session)
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
                claim, lease_epoch = await self._claim(session, frame.session)
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
                    group_replays = await join_groups_at_login(self.relay, self.groups, self.store, session, resume)
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
        except REDIS_ERRORS as exc:
            raise redis_failure(exc) from None
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
        if self._pubsub_losses != losses or self._lease_losses != lease_epoch:
            # The subscriptions dropped, or the lease was found lost (the name may have been freed, so
            # DMs stored meanwhile were published nowhere), during this login: its replay may end
            # before what it missed, and the catch-up that began meanwhile skipped it (still joining;
            # a re-claim that ran after the login ended kept it).  Still holding, so no live frame
            # moves the client's positions past that gap: close, and the client resumes from what it
            # got (its next login reads everything after that).
            log.info("%s was lost during the login of %s; closing it so that it resumes",
                     "pub/sub" if self._pubsub_losses != losses else "the lease", name)
            self.close_session(session, CloseCode.SESSION_LOST, "session lost")
        else:
            session.go_live()
            self.fanout.add(session)
        self.m_logins.inc("ok")
        self.m_replayed.inc("login", amount=len(dms.frames) + (len(broadcasts.frames) if broadcasts else 0))
        try:  # the inbox is written up to last_dm: the cursor may move there, and with live DMs from now on
            await self.store.settle(key, session.token_hash, session.last_dm_id)
        except REDIS_ERRORS:
            log.warning("could not record delivery for %s; replay may repeat", name)
        log.info(
            "login %s from %s%s (replayed %d DMs, %d broadcasts%s)", name, peer(ws),
            " taking over its session" if claim.took_over else "", len(dms.frames),
            len(broadcasts.frames) if broadcasts else 0,
            "" if all(recovered.values()) else "; history no longer reaches the resume point",
        )
        return session

    async def _claim(self, session: Session, takeover: str | None) -> tuple[Claim | None, int]:
        """Claim the session's name; with the count of lost leases read before the claim that
        succeeded (a loss found after it may have freed the name while the login reads its replay)."""
        page = 0 if session.presence == f.PRESENCE_OFF else self.settings.online_page
        args = (session.key, session.name, self.node_id, session.token, takeover, page)
        epoch = self._lease_losses
        try:
            return await self.registry.claim(*args), epoch
        except NoLease:
            self._lease_lost()  # the other sessions' names were freed too: re-claim them and catch up
            epoch = self._lease_losses  # this claim comes after that loss
            sent = asyncio.get_running_loop().time()
            await self.registry.register_gateway(self.node_id)
            self.lease_renewed(sent)
            return await self.registry.claim(*args), epoch

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
        session = self._by_token.get(msg.token)
        if session is not None and session.key == msg.user:
            log.info("session of %s taken over by a new connection; closing the old one", session.name)
            self.fanout.drop(session.ws)
            self.relay.detach_all(session)  # group membership moved with the name
            self._close_later(session.ws, CloseCode.TAKEN_OVER, "session taken over")

    # -- groups at login, logout ---------------------------------------------

    async def _logout(self, session: Session) -> None:
        self.fanout.drop(session.ws)
        self.joining.discard(session)
        owned = self.sessions.get(session.key) is session
        cursors = cursors_of(session)
        self.relay.detach_all(session)
        if owned and cursors:
            try:  # where a later login without resume positions picks each group up
                await self.groups.save_cursors(session.key, cursors)
            except REDIS_ERRORS:
                log.warning("could not save group positions of %s", session.name)
        if not self._forget(session):  # taken over on this very gateway: the new session owns it all
            return
        await self.router.unsubscribe(keys.user_channel(session.key))
        await self._release(session)
        log.info("logout %s (close code %s)", session.name, session.ws.close_code)

    async def _release(self, session: Session) -> None:
        try:
            await self.registry.release(session.key, self.node_id, session.token)
        except REDIS_ERRORS:
            self._to_release[(session.key, session.token)] = None

    def _reply_error(self, ws: ServerConnection, exc: ChatError, session: Session | None = None) -> None:
        """The one place a ChatError becomes an error frame on the wire."""
        self.m_errors.inc(exc.code.value)
        reply_error(ws, exc, self.m_errors, session)

    # -- broadcasts and recovery ---------------------------------------------

    def _on_broadcast(self, frame: bytes) -> None:
        if self._broadcast_held is not None:
            self._broadcast_held.append(frame)
        else:
            self._emit_broadcast(frame)

    def _emit_broadcast(self, frame: bytes) -> None:
        mid = frame_id(frame)
        if mid > self.last_broadcast:  # older or equal: already fanned out by replay or live
            self.last_broadcast = mid
            self.m_out.inc("broadcast", amount=self.fanout.broadcast(frame))
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
                except (*REDIS_ERRORS, NoLease) as exc:  # NoLease: reaped again before the re-claim
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
        except REDIS_ERRORS as exc:
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
        self.fanout.broadcast(online)
        return recovered

    def _on_slow(self, session: Session) -> None:
        if session.ws in self.fanout.live:
            self.fanout.drop(session.ws)
            log.warning("%s is not reading; closing as slow consumer", session.name)
            self.m_slow.inc()
            self._spawn(cut_off(session.ws), "cut-off")

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
        self._spawn(ws.close(code, reason), "close")


def _ip(ws: ServerConnection) -> str:
    """The client's address: the TCP peer's, or a trusted proxy's X-Forwarded-For (gateway/client_ip.py)."""
    return client_ip(ws)


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
