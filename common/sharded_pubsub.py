"""Sharded pub/sub on a Redis Cluster that survives a master failover.

Redis 7's ``SSUBSCRIBE`` is answered only by the master owning the channel's
slot, so a subscriber holds one connection per master (node-grouped, as
Centrifugo does).  redis-py's own ``ClusterPubSub`` was seen not to recover
from a master failover when nothing else on its client refreshed the slot map,
so this module keeps the subscriptions itself:

* every channel has a handler; ``subscribe`` returns once Redis confirms it;
* each master gets a :class:`_ShardLink`: one pub/sub connection, one reader
  task, a PING after ``keepalive`` seconds of silence and a drop after
  ``ping_timeout`` more (a half-open socket is found, not waited on forever);
* a link that fails -- connection lost, ``-MOVED`` on ``SSUBSCRIBE``, a
  server-side ``sunsubscribe`` when the slot moves, an unanswered PING, a node
  that does not own the slot once subscribed (:class:`NotMaster`) -- is
  closed and its channels are *lost*: ``on_lost(channels)`` is called at once
  (the caller holds live delivery), the slot map is refreshed
  (``nodes_manager.initialize()``) and the channels are placed again on their
  current owners, retried with capped, jittered backoff until that works; then
  ``on_resubscribed(channels)`` (the caller replays the streams: pub/sub lost
  whatever was published while the shard was dark).  Until the replica is
  promoted every node's ``CLUSTER SLOTS`` still names the dead master, so a
  refresh asks the other nodes first and is simply repeated; the first retry
  is a warning, later ones are debug lines plus one warning every
  ``report_every`` seconds naming the node the map points at.

A ``cancel()`` can be swallowed inside redis-py (Python 3.11's ``wait_for``
around its socket writes, see ``common.runtime.end_if_cancelled``), so both
loops here call ``end_if_cancelled`` at every turn and readers are stopped
with ``cancel_and_wait``: a swallowed cancel costs one turn, never a hang.

A link's connection never reconnects by itself (redis-py's silent reconnect
and resubscribe would hide a gap), so every loss is seen and reported.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError, SlotNotCoveredError

from common.backoff import Backoff
from common.redis import REDIS_ERRORS
from common.runtime import cancel_and_wait, end_if_cancelled

log = logging.getLogger("chinwag.sharded_pubsub")

# REDIS_ERRORS, plus redis-py's cluster errors that are not RedisErrors: a slot no master
# covers (mid-failover) is "Redis is away" for this loop, too.
CLUSTER_ERRORS = (*REDIS_ERRORS, RedisClusterException)

# Recent redis-py (8.x here) can be told which node just failed, and asks it last for the slot map.
_ASKS_FAILED_NODE_LAST = "last_failed_node_name" in inspect.signature(NodesManager.initialize).parameters

Handler = Callable[[bytes], None]
ChannelsCallback = Callable[[set[bytes]], None]


class LinkLost(ConnectionError):
    """A shard link stopped serving its channels (the reason is in the message)."""


class NotMaster(RedisConnectionError):
    """The node a stale slot map named took the ``SSUBSCRIBE`` but does not own the slot (a replica now).

    Redis 7 lets a replica take ``SSUBSCRIBE``, but its master forwards
    ``SPUBLISH`` only to the replicas it knows: a killed master restarted as
    the new master's replica, and subscribed to through a map read before the
    promotion, heard nothing for ~70 ms and no link broke (the failover chaos
    test lost DMs so).  A link is kept only on a node that, once its
    ``SSUBSCRIBE`` is confirmed, answers a key read in each slot itself (a
    replica without ``READONLY`` answers ``-MOVED``; ``ROLE`` is ``@admin``,
    which a least-privilege ACL user may lack).  A master demoted later loses
    its slots, and Redis ends those subscriptions (``sunsubscribe``, handled).
    """


@dataclass(eq=False)
class _ShardLink:
    """One master's pub/sub connection, the channels confirmed on it, and its reader."""

    name: str
    client: Redis
    pubsub: PubSub
    channels: set[bytes] = field(default_factory=set)
    confirms: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    last_data: float = 0.0
    ping_sent: float | None = None
    broken: bool = False


class ShardedSubscriber:
    """Channel -> handler over ``SSUBSCRIBE``, kept in force across failovers by :meth:`run`.

    One thing: subscribing, the links' readers and the repair loop share one
    lock, one slot map and one set of lost channels, so the class is past 300
    lines on purpose.
    """

    def __init__(self, cluster: RedisCluster, *, keepalive: float = 1.0, ping_timeout: float = 3.0,
                 confirm_timeout: float = 5.0, backoff: Backoff | None = None, report_every: float = 10.0) -> None:
        self.cluster = cluster
        self.keepalive = keepalive  # seconds of silence on a link before a PING
        self.ping_timeout = ping_timeout  # seconds a PING may go unanswered before the link is dropped
        self.confirm_timeout = confirm_timeout
        # A retry costs one CLUSTER SLOTS and a connect attempt, so the cap is low: it bounds
        # how long a channel stays dark after its replica is promoted (docs/cluster.md).
        self.backoff = backoff or Backoff(base=0.05, cap=0.5)
        self.report_every = report_every  # seconds between warnings while channels stay dark
        self.on_lost: ChannelsCallback | None = None
        self.on_resubscribed: ChannelsCallback | None = None
        self.resubscribes = 0  # times lost channels were placed again
        self._handlers: dict[bytes, Handler] = {}
        self._links: dict[str, _ShardLink] = {}
        self._lost: set[bytes] = set()  # dark since a loss, to be reported when placed again
        self._closing: list[_ShardLink] = []
        self._stale_map = False
        self._failed_node: str | None = None  # the node that failed last: asked last for the slot map
        self._outage_began: float | None = None  # first failed repair of the current outage
        self._next_report = 0.0
        self._tries = 0  # failed repairs in the current outage
        self._lock = asyncio.Lock()  # one placement at a time: subscribe and the repair loop
        self._wake = asyncio.Event()

    # -- public API ---------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Every channel confirmed on a working link."""
        return self._placed() >= set(self._handlers)

    @property
    def channels(self) -> int:
        """Channels with a handler (subscribed, or to be placed by ``run``)."""
        return len(self._handlers)

    @property
    def dark(self) -> frozenset[bytes]:
        """Channels lost (``on_lost``) and not yet subscribed again (``on_resubscribed``)."""
        return frozenset(self._lost)

    def set_handler(self, channel: bytes, handler: Handler) -> None:
        """Route ``channel`` to ``handler`` now, without waiting: a channel not yet subscribed is
        placed by ``run`` (a gateway's own channels are set before ``run`` starts)."""
        new = channel not in self._handlers
        self._handlers[channel] = handler
        if new:
            self._wake.set()

    def owner(self, channel: bytes) -> str | None:
        """The node (``host:port``) whose link carries ``channel``, if it is placed."""
        return next((name for name, link in self._links.items() if channel in link.channels), None)

    async def subscribe(self, channel: bytes, handler: Handler) -> None:
        """Route ``channel`` to ``handler``; returns once its master confirms the ``SSUBSCRIBE``.

        Raises one of ``CLUSTER_ERRORS`` when that cannot be done now; the
        new handler is then not kept (a channel already subscribed keeps its old one).
        """
        previous = self._handlers.get(channel)
        self._handlers[channel] = handler
        try:
            async with self._lock:
                await self._place({channel})
        except BaseException:
            if previous is None:
                self._handlers.pop(channel, None)
            else:
                self._handlers[channel] = previous
            self._stale_map = True
            raise

    async def unsubscribe(self, channel: bytes) -> None:
        """Stop routing ``channel``: its handler at once, its ``SUNSUBSCRIBE`` best effort (a lost
        link drops it anyway); a link left with no channel is closed before this returns."""
        if self._handlers.pop(channel, None) is None:
            return
        self._lost.discard(channel)
        async with self._lock:
            for link in list(self._links.values()):
                if channel in link.channels:
                    link.channels.discard(channel)
                    if not link.channels:
                        self._drop(link)
                    elif not link.broken:
                        try:
                            await link.pubsub.sunsubscribe(channel)
                        except REDIS_ERRORS as exc:
                            self._break(link, exc)
            await self._close_dropped()  # an emptied link is closed before this returns

    async def run(self) -> None:
        """Repair lost subscriptions forever (cancel to stop; every link is closed then)."""
        try:
            while True:
                end_if_cancelled()
                await self._wake.wait()
                self._wake.clear()
                try:
                    async with self._lock:
                        await self._repair()
                except asyncio.CancelledError:
                    raise
                except CLUSTER_ERRORS as exc:  # expected while a shard fails over
                    await asyncio.sleep(self._retry_later(exc, unexpected=False))
                except Exception as exc:
                    await asyncio.sleep(self._retry_later(exc, unexpected=True))
                else:
                    self._repaired()
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every link (used by ``run`` on the way out; safe to call twice)."""
        for link in list(self._links.values()):
            self._drop(link)
        await self._close_dropped()

    # -- repair -------------------------------------------------------------

    def _retry_later(self, exc: BaseException, *, unexpected: bool) -> float:
        """Log the failed repair at a low rate; the delay before the next try (the map is refreshed then).

        The first failure of an outage is a warning, so is one every
        ``report_every`` seconds after it (how long, how many tries, which node
        the slot map names); the retries in between are debug lines.
        """
        delay = self.backoff.next_delay()
        self._stale_map = True
        self._wake.set()
        now = asyncio.get_running_loop().time()
        self._tries += 1
        if self._outage_began is None:
            self._outage_began = now
        if self._tries == 1 or now >= self._next_report:
            self._next_report = now + self.report_every
            dark = set(self._handlers) - self._placed()
            log.warning("sharded pub/sub: %d channel(s) not subscribed for %.1fs after %d tries; the slot map "
                        "names %s for them (%s: %s); retrying in %.2fs",
                        len(dark), now - self._outage_began, self._tries, self._named_owners(dark),
                        type(exc).__name__, exc, delay, exc_info=exc if unexpected else None)
        else:
            log.debug("sharded pub/sub: repair try %d failed (%s: %s); retrying in %.2fs",
                      self._tries, type(exc).__name__, exc, delay)
        return delay

    def _repaired(self) -> None:
        """A repair went through: the backoff and the outage start over."""
        self.backoff.reset()
        if self._outage_began is not None:
            log.info("sharded pub/sub: repaired after %.1fs and %d failed tries",
                     asyncio.get_running_loop().time() - self._outage_began, self._tries)
        self._outage_began = None
        self._tries = 0
        self._failed_node = None

    def _named_owners(self, channels: set[bytes]) -> str:
        """The masters the current slot map names for ``channels`` (what a stuck repair keeps trying)."""
        owners: set[str] = set()
        for channel in channels:
            try:
                owners.add(self._owner(channel).name)
            except SlotNotCoveredError:
                owners.add("no master")
        return ", ".join(sorted(owners)) or "nothing"

    def _placed(self) -> set[bytes]:
        return {ch for link in self._links.values() if not link.broken for ch in link.channels}

    async def _repair(self) -> None:
        await self._close_dropped()
        if self._stale_map:
            await self._refresh_map()
            self._stale_map = False
            self._move_misplaced()
        missing = set(self._handlers) - self._placed()
        if missing:
            await self._place(missing)
        back = self._lost & self._placed()
        if back:
            self._lost -= back
            self.resubscribes += 1
            log.info("sharded pub/sub: %d channel(s) subscribed again", len(back))
            _notify(self.on_resubscribed, back)

    def _move_misplaced(self) -> None:
        """Channels whose slot now belongs to another master leave their link (and count as lost)."""
        for link in list(self._links.values()):
            moved = {ch for ch in link.channels if self._owner(ch).name != link.name}
            if moved:
                self._lose(link, moved, "slot moved")
                link.channels -= moved
                if not link.channels:
                    self._drop(link)

    def _owner(self, channel: bytes) -> ClusterNode:
        """The master owning ``channel``'s slot in the client's current slot map."""
        try:
            return self.cluster.nodes_manager.get_node_from_slot(key_slot(channel))
        except KeyError:
            raise SlotNotCoveredError(f"slot {key_slot(channel)} of {channel!r} is not covered") from None

    async def _refresh_map(self) -> None:
        """The slot map as the cluster says now (redis-py's own refresh waits for its next error).

        The node that failed last is asked last: a dead host may cost a connect
        timeout, and until its replica is promoted the map names it anyway.
        """
        manager = self.cluster.nodes_manager
        if not manager.slots_cache:
            await self.cluster.initialize()  # never initialised: this also reads the command table
        elif self._failed_node is not None and _ASKS_FAILED_NODE_LAST:
            await manager.initialize(last_failed_node_name=self._failed_node)
        else:
            await manager.initialize()

    async def _place(self, channels: Iterable[bytes]) -> None:
        if not self.cluster.nodes_manager.slots_cache:
            await self.cluster.initialize()
        by_node: dict[str, list[bytes]] = defaultdict(list)
        nodes: dict[str, ClusterNode] = {}
        for channel in channels:
            node = self._owner(channel)
            nodes[node.name] = node
            by_node[node.name].append(channel)
        results = await asyncio.gather(*(self._place_on(nodes[name], chans) for name, chans in by_node.items()),
                                       return_exceptions=True)
        for result in results:  # every node had its try; the first failure is the caller's
            if isinstance(result, BaseException):
                raise result

    async def _place_on(self, node: ClusterNode, channels: list[bytes]) -> None:
        link = self._links.get(node.name)
        if link is None or link.broken:
            link = await self._open(node)
        loop = asyncio.get_running_loop()
        futures = {ch: link.confirms.setdefault(ch, loop.create_future()) for ch in channels}
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for channel in channels:
            by_slot[key_slot(channel)].append(channel)
        try:
            for same_slot in by_slot.values():  # one SSUBSCRIBE may not span slots
                await link.pubsub.ssubscribe(*same_slot)
            await asyncio.wait_for(asyncio.gather(*futures.values()), self.confirm_timeout)
            await self._check_owner(link, by_slot)
        except REDIS_ERRORS as exc:
            self._break(link, exc)
            raise
        finally:
            for channel in channels:
                link.confirms.pop(channel, None)
        link.channels.update(ch for ch in channels if ch in self._handlers)

    async def _check_owner(self, link: _ShardLink, by_slot: dict[int, list[bytes]]) -> None:
        """Raise :class:`NotMaster` unless the link's node owns every slot of ``by_slot`` now (after the
        ``SSUBSCRIBE``: see there): ``EXISTS`` of one channel name per slot, in one round trip."""
        async with link.client.pipeline(transaction=False) as pipe:
            for same_slot in by_slot.values():
                pipe.exists(same_slot[0])
            try:
                await asyncio.wait_for(pipe.execute(), self.confirm_timeout)
            except ResponseError as exc:  # -MOVED: a replica, or the slot is elsewhere by now
                raise NotMaster(f"{link.name} does not own the slot its map named ({exc})") from exc

    async def _open(self, node: ClusterNode) -> _ShardLink:
        kwargs: dict[str, Any] = {k: v for k, v in node.connection_kwargs.items()
                                  if k not in ("event_dispatcher", "retry", "maint_notifications_config")}
        pool = ConnectionPool(connection_class=node.connection_class, retry=Retry(NoBackoff(), 0), **kwargs)
        client = Redis.from_pool(pool)
        pubsub = client.pubsub()
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            self._failed_node = node.name
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
            raise
        link = _ShardLink(node.name, client, pubsub, last_data=asyncio.get_running_loop().time())
        self._links[node.name] = link
        link.reader = asyncio.create_task(self._read(link), name=f"sharded-pubsub {node.name}")
        return link

    # -- reading ------------------------------------------------------------

    async def _read(self, link: _ShardLink) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                end_if_cancelled()
                message = await link.pubsub.get_message(timeout=self.keepalive)
                now = loop.time()
                if message is None:
                    if link.ping_sent is not None and now - link.ping_sent > self.ping_timeout:
                        raise LinkLost(f"PING unanswered for {self.ping_timeout:.1f}s")
                    if link.ping_sent is None and now - link.last_data >= self.keepalive:
                        link.ping_sent = now
                        await link.pubsub.ping()
                    continue
                link.last_data = now
                link.ping_sent = None
                self._on_message(link, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever it was, the link no longer serves its channels
            self._break(link, exc)

    def _on_message(self, link: _ShardLink, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind == "smessage":
            handler = self._handlers.get(channel)
            if handler is not None and (channel in link.channels or channel in link.confirms):
                try:
                    handler(message["data"])
                except Exception:
                    log.exception("handler for %r failed", channel)
        elif kind == "ssubscribe":
            future = link.confirms.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "sunsubscribe" and channel in self._handlers and channel in link.channels:
            # Not asked for: the server gave the slot away (failover, migration).
            self._lose(link, {channel}, "unsubscribed by the server")
            link.channels.discard(channel)
            self._stale_map = True
            self._wake.set()

    # -- losing -------------------------------------------------------------

    def _lose(self, link: _ShardLink, channels: set[bytes], why: str) -> None:
        lost = channels & set(self._handlers)
        if not lost:
            return
        log.warning("sharded pub/sub: %d channel(s) on %s dark (%s)", len(lost), link.name, why)
        self._lost |= lost
        _notify(self.on_lost, lost)

    def _break(self, link: _ShardLink, exc: BaseException) -> None:
        """The link is done: its channels are lost, the map is stale, the repair loop is woken."""
        if link.broken:
            return
        link.broken = True
        self._failed_node = link.name
        self._lose(link, set(link.channels), f"{type(exc).__name__}: {exc}")
        for future in link.confirms.values():
            if not future.done():
                future.set_exception(LinkLost(f"link to {link.name} lost: {exc}"))
                future.exception()  # retrieved: the placing side may already have given up
        self._drop(link)
        self._stale_map = True
        self._wake.set()

    def _drop(self, link: _ShardLink) -> None:
        link.broken = True
        if self._links.get(link.name) is link:
            del self._links[link.name]
        self._closing.append(link)
        self._wake.set()

    async def _close_dropped(self) -> None:
        closing, self._closing = self._closing, []
        for link in closing:
            if link.reader is not None and link.reader is not asyncio.current_task():
                await cancel_and_wait([link.reader])  # bounded, even if redis-py swallows a cancel
            try:
                await link.pubsub.aclose()  # type: ignore[no-untyped-call]
                await link.client.aclose()
            except REDIS_ERRORS:
                pass  # a dead node's socket: nothing to say goodbye to


def _notify(callback: ChannelsCallback | None, channels: set[bytes]) -> None:
    """Call an ``on_lost``/``on_resubscribed`` callback; its failure is logged, never the loop's."""
    if callback is None:
        return
    try:
        callback(channels)
    except Exception:
        log.exception("sharded pub/sub callback %r failed", callback)
