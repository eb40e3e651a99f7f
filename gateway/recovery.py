"""Recovery after a pub/sub outage or a lost lease: hold live frames, catch up from the streams, release.

Redis pub/sub is at-most-once: what is published while the gateway's
subscriptions are down (a Redis restart, a network blip) never arrives.  So the
moment the router loses its connection (``on_lost``) every live session starts
*holding* live frames, and broadcasts arriving meanwhile are kept here; when the
router has resubscribed (``on_resubscribed``) the catch-up replays the broadcast
stream, each session's inbox and each group after the last id written to it,
then releases what was held.  Every message stored while the gateway was cut off
still arrives, once and in order: each replay and each held frame is id-checked
by :class:`gateway.session.Session`.

A lost lease (gateway/lease.py) goes through the same task: hold first, re-claim
the names, then catch up.  The broadcast position (``last_broadcast``) lives here
because the catch-up and the live fan-out must share it to drop what the other
already wrote.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from common import keys
from common.backoff import Backoff
from common.redis import REDIS_ERRORS
from common.runtime import end_if_cancelled
from presence.registry import NoLease
from protocol import frames as f
from protocol.frames import frame_id

from . import lease

if TYPE_CHECKING:
    from .server import Gateway
    from .session import Session

log = logging.getLogger("chinwag.gateway")


def id_str(mid: tuple[int, int]) -> str:
    """A stream id tuple as Redis writes it."""
    return f"{mid[0]}-{mid[1]}"


class Recovery:
    """The broadcast fan-out position, the held frames and the one recovery task of a gateway.

    Interface: ``on_broadcast`` (the router's handler for the broadcast channel),
    ``pubsub_lost`` and ``start`` (the router's ``on_lost``/``on_resubscribed``),
    ``lease_lost`` (the lease loop and a login's claim), and for a login the
    position it starts from (``last_broadcast``) and ``losses``, the count of
    pub/sub losses, by which a login notices one happened while it ran.
    """

    give_up_after = 60.0  # seconds a catch-up retries before leaving it to the next trigger (and a re-claim retry)

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        # Id of the last broadcast fanned out; Gateway.start sets it from Redis's clock.
        self.last_broadcast = (int(time.time() * 1000), 0)
        self.held: list[bytes] | None = None  # broadcasts arriving during recovery
        self.scope = Scope()  # what was lost since the last catch-up (what the next one replays)
        self.task: asyncio.Task[Any] | None = None
        self.reclaim_pending = False  # the lease was lost: the next recovery re-claims names first
        self.losses = 0  # times the pub/sub connection was lost: a catch-up spanning one is stale
        self.lease_losses = 0  # times the lease was found lost: a login spanning one may have missed DMs
        self._lease_fresh_until: float | None = None  # loop time until which the last renewal vouches
        # Between recovery tasks that died with a re-claim still to do: capped, jittered retries.
        self._retry_backoff = Backoff(base=0.1, cap=5.0)
        self._retry: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    # -- broadcasts ------------------------------------------------------------

    def on_broadcast(self, frame: bytes) -> None:
        if self.held is not None:
            self.held.append(frame)
        else:
            self.emit_broadcast(frame)

    def emit_broadcast(self, frame: bytes) -> None:
        mid = frame_id(frame)
        if mid > self.last_broadcast:  # older or equal: already fanned out by replay or live
            self.last_broadcast = mid
            self.gw.m_out.inc("broadcast", amount=self.gw.fanout.broadcast(frame))
            for session in self.gw.joining:
                session.hold_broadcast(frame)

    # -- holding and the recovery task -----------------------------------------

    def hold_everything(self) -> None:
        """Subscriptions are gone: from now on live frames wait until the catch-up has run."""
        self.scope.everything = True
        self._hold(self.scope)

    def _hold(self, scope: Scope) -> None:
        """Live frames of what ``scope`` covers wait until the catch-up has run."""
        if scope.everything or scope.broadcast:
            if self.held is None:
                self.held = []
        for session in self._sessions(scope):
            session.start_holding()

    def _sessions(self, scope: Scope) -> list[Session]:
        """The sessions (not still logging in) whose streams ``scope`` replays: all of them, or the owners
        of its user channels and the local members of its groups."""
        gw = self.gw
        live = [s for s in gw.sessions.values() if s not in gw.joining]
        if scope.everything:
            return live
        members = {s for gkey in scope.groups for s in gw.relay.members.get(gkey, ())}
        return [s for s in live if s.key in scope.users or s in members]

    def pubsub_lost(self, channels: set[str] | None = None) -> None:
        """The router lost subscriptions: everything (``channels`` None: the one connection), or on a
        cluster the channels of one shard, and then only their sessions are held (Scope)."""
        self.losses += 1
        if channels is None:
            self.hold_everything()
            return
        self.scope.add(channels, self._channel_kinds())
        self._hold(self.scope)

    def _channel_kinds(self) -> dict[str, tuple[str, str]]:
        """Channel -> (kind, owner key) for every channel this gateway listens to."""
        kinds: dict[str, tuple[str, str]] = {keys.BROADCAST_CHANNEL: ("broadcast", "")}
        kinds.update((ch, ("presence", "")) for ch in keys.PRESENCE_CHANNELS)
        kinds[keys.gateway_channel(self.gw.node_id)] = ("control", "")
        kinds.update((keys.user_channel(key), ("user", key)) for key in self.gw.sessions)
        kinds.update((keys.group_channel(gkey), ("group", gkey)) for gkey in self.gw.relay.members)
        return kinds

    def lease_renewed(self, sent: float) -> None:
        """The lease was registered or renewed by a request sent at loop time ``sent``."""
        self._lease_fresh_until = sent + self.gw.settings.lease_ttl

    def check_lease(self) -> None:
        """Before a live frame is handed on: if no renewal vouches for the lease any more (this process
        was stalled, or cut off from Redis, for longer than the lease), it may have been reaped and a
        name freed meanwhile, so a frame published after that could move a client past a DM stored
        while the name was free.  Treat the lease as lost first: hold, re-claim, catch up (a name that
        was not reaped is simply kept)."""
        if self.reclaim_pending or self._lease_fresh_until is None:
            return
        if asyncio.get_running_loop().time() > self._lease_fresh_until:
            log.warning("no lease renewal of %s for longer than the lease; checking it before delivering",
                        self.gw.node_id)
            self.lease_lost()

    def lease_lost(self) -> None:
        """The lease was reaped: hold every session's live frames now, then re-claim and catch up
        in the recovery task (gateway/lease.py explains why in this order)."""
        if self.reclaim_pending:
            return
        log.warning("lease of %s was lost; holding live frames, re-claiming names and catching up", self.gw.node_id)
        self.lease_losses += 1
        self.hold_everything()
        self.reclaim_pending = True
        self.start()

    def start(self, channels: set[str] | None = None) -> None:
        """Catch up what was lost since the last catch-up (the router's ``on_resubscribed``).

        ``channels`` (a cluster shard's, now subscribed again) need no more than what their loss
        already put in the scope; a catch-up that ends while another shard is still dark keeps
        holding, and that shard's resubscribe starts the next one, for the whole scope."""
        if channels is None and self.scope.empty:
            self.scope.everything = True  # a start with no loss recorded (the lease loop): be safe
        if self.task is not None and not self.task.done():
            self.task.cancel()  # superseded: its finally releases what it held
        self.task = self.gw.spawn(self._recover(), "recover")

    async def _recover(self) -> None:
        """After resubscribing: deliver what was stored while the subscriptions were down.

        Retried with backoff while Redis cannot answer yet (a restarted Redis
        accepts subscriptions while still loading its AOF); live frames are held
        meanwhile, and nothing new can be stored until Redis has loaded.
        """
        scope = self.scope  # what was lost since the last catch-up; losses during this one add to it
        self._hold(scope)  # normally already holding since the loss
        losses = self.losses
        sessions = self._sessions(scope)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        backoff = Backoff(base=0.05, cap=1.0)
        superseded = False
        try:
            await self._recover_loop(sessions, scope, losses, deadline, backoff)
        except asyncio.CancelledError:
            superseded = True
            raise
        finally:
            # A loop that survives: whatever ended this task (a bug, an error nobody foresaw, the 60 s
            # give-up), a re-claim still owed is retried, so a later lease loss (which returns early
            # while one is pending) never finds it stuck.  Not when superseded: the newer task has it.
            if not superseded:
                if self.reclaim_pending:
                    self._schedule_retry()
                else:
                    self._retry_backoff.reset()

    def _schedule_retry(self) -> None:
        if self._retry is not None and not self._retry.cancelled():
            self._retry.cancel()
        delay = self._retry_backoff.next_delay()
        log.warning("re-claim of %s still to do; retrying in %.2f s", self.gw.node_id, delay)
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_reclaim)

    def _retry_reclaim(self) -> None:
        self._retry = None
        if self.reclaim_pending and not self.running and not self.gw.stopping:
            self.start()

    async def _recover_loop(
        self, sessions: list[Session], scope: Scope, losses: int, deadline: float, backoff: Backoff
    ) -> None:
        gw = self.gw
        loop = asyncio.get_running_loop()
        try:
            while True:
                end_if_cancelled()  # superseded, and redis-py swallowed the cancel: stop here
                try:
                    if self.reclaim_pending:
                        lost = await lease.reclaim(gw)
                        self.reclaim_pending = False
                        sessions = [s for s in sessions if s not in lost]
                    recovered = await self._catch_up(sessions, scope)
                    end_if_cancelled()  # a superseded catch-up must not release what the newer one holds
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not isinstance(exc, (*REDIS_ERRORS, NoLease)):  # NoLease: reaped again before the re-claim
                        log.error("catch-up failed unexpectedly; retrying", exc_info=exc)
                    if loop.time() > deadline:
                        log.error("gave up catching up after reconnect (%s); clients resume on their next login",
                                  type(exc).__name__)
                        break
                    log.info("cannot catch up yet (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                log.info("recovered %d messages stored while pub/sub was down", recovered)
                gw.m_replayed.inc("resubscribe", amount=recovered)
                break
        except asyncio.CancelledError:
            raise  # superseded by a newer catch-up, which inherits everything held
        except BaseException:
            if self.losses == losses and gw.router.live:
                self._release_held(sessions)
                self.scope = Scope()
            raise
        if self.losses != losses or not gw.router.live:
            # The subscriptions are down (again): releasing now would let the first live frames
            # after the resubscribe overtake the messages stored meanwhile (their ids would move
            # every position past them).  Keep holding: the resubscribe starts the next catch-up.
            log.info("pub/sub is down again; holding live frames until the next catch-up")
            return
        self._release_held(sessions)
        self.scope = Scope()
        try:
            await lease.settle(gw, sessions)
        except REDIS_ERRORS as exc:
            log.warning("could not record delivery after catching up (%s); replay may repeat", type(exc).__name__)

    def _release_held(self, sessions: list[Session]) -> None:
        held, self.held = self.held or [], None
        for frame in held:
            self.emit_broadcast(frame)
        for session in sessions:
            session.go_live()

    async def _catch_up(self, sessions: list[Session], scope: Scope) -> int:
        """Replay what ``scope`` lost after what was last written (id-checked, so re-runnable): broadcasts,
        the inboxes of its users, its groups' streams; the online list again after presence was lost."""
        gw = self.gw
        recovered = 0
        if scope.everything or scope.broadcast:
            for _, frame in (await gw.store.replay(keys.BROADCAST_STREAM, id_str(self.last_broadcast))).frames:
                self.emit_broadcast(frame)
                recovered += 1
        for session in sessions:
            if not scope.everything and session.key not in scope.users:
                continue  # held for a group only: its own channel was never lost
            missed = (await gw.store.replay(keys.inbox_stream(session.key), session.last_dm_id)).frames
            try:
                for _, frame in missed:
                    await session.replay_dm(frame)
            except ConnectionClosed:
                continue  # that client left; its handler logs it out
            recovered += len(missed)
        # Memberships that ended (or began again) while the subscriptions were down; each member's
        # replay stops at the newest id when its membership was read: later ones arrive live.
        if scope.everything or scope.groups:
            recovered += await self._catch_up_groups(sessions, scope)
        if scope.everything or scope.presence:
            page = await gw.registry.online_page(None, gw.settings.online_page)  # clients page on with `who`
            online = f.encode(f.Online(users=page.names, total=page.total, next=page.next))
            gw.fanout.broadcast(online)
        return recovered

    async def _catch_up_groups(self, sessions: list[Session], scope: Scope) -> int:
        gw = self.gw
        recovered = 0
        bounds = await gw.relay.verify()
        caught_up = set(sessions)  # not sessions still logging in: their login replays their groups
        for gkey, members in list(gw.relay.members.items()):
            if not scope.everything and gkey not in scope.groups:
                continue
            readers = [s for s in members if s in caught_up]
            if not readers:
                continue
            # (0, 0) is a position like any other (a group joined before anything was stored): from the start.
            since = min(s.last_group.get(gkey, (0, 0)) for s in readers)
            for _, frame in (await gw.store.replay(keys.group_stream(gkey), id_str(since))).frames:
                mid = frame_id(frame)
                for session in readers:
                    if mid > bounds.get((session, gkey), (0, 0)):
                        continue
                    try:
                        await session.replay_group(gkey, frame)
                    except ConnectionClosed:
                        continue
                recovered += 1
        return recovered


@dataclass
class Scope:
    """What was lost since the last catch-up, so what the next one replays: everything (the one pub/sub
    connection, a lost lease), or on a cluster the channels of the shards whose links went: users'
    inboxes, groups' streams, the broadcast stream, the online list (presence is state, not a stream).
    A lost gateway control channel needs nothing replayed; an unknown channel counts as everything."""

    everything: bool = False
    broadcast: bool = False
    presence: bool = False
    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.everything or self.broadcast or self.presence or self.users or self.groups)

    def add(self, channels: set[str], kinds: dict[str, tuple[str, str]]) -> None:
        for channel in channels:
            kind, key = kinds.get(channel, ("unknown", ""))
            if kind == "broadcast":
                self.broadcast = True
            elif kind == "presence":
                self.presence = True
            elif kind == "user":
                self.users.add(key)
            elif kind == "group":
                self.groups.add(key)
            elif kind == "unknown":
                self.everything = True
