"""The presence events ``chinwag-admin``'s monitor logs, from one Redis or from a Redis Cluster.

Every login and logout is published on its user's presence partition, one of
``keys.PRESENCE_CHANNELS`` (presence/registry.py, docs/cluster.md "Presence
fan-out").  The monitor follows all of them:

* on one Redis they are ordinary channels (``PUBLISH``): one pub/sub
  connection, opened again by the monitor after an outage, which then re-reads
  the online index (:class:`ChannelFeed`);
* on a cluster they are sharded channels (``SPUBLISH``), each answered only by
  the master owning its slot: a :class:`common.sharded_pubsub.ShardedSubscriber`
  holds one link per master and places the channels again after a failover, as
  the gateway's router does (:class:`ShardedFeed`).  A lost shard does not stop
  the monitor: it notes which partitions went dark, and when they are back it
  notes that too and asks the monitor to re-read who holds which name (what was
  published while they were dark is not in the log; the table, re-read every
  second, is right again at once).

Both hand the monitor the same things through ``get``: an event's payload
(bytes), or a :class:`FeedNote` for the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from common import keys
from common.redis import REDIS_ERRORS, RedisClient
from common.runtime import cancel_and_wait
from common.sharded_pubsub import ShardedSubscriber


@dataclass(frozen=True, slots=True)
class FeedNote:
    """A line for the log from the feed itself; ``resync``: events may have been missed, re-read the holders."""

    level: str
    text: str
    resync: bool = False


class PresenceFeed(Protocol):
    """What the monitor reads presence from (one Redis or a cluster)."""

    async def open(self) -> None:
        """Follow every presence partition; raises a Redis error when that cannot be done now."""

    async def get(self, timeout: float) -> bytes | FeedNote | None:
        """The next event payload or note, None if nothing came within ``timeout`` seconds."""

    async def reset(self) -> None:
        """After a Redis error: drop what ``open`` must build again."""

    async def close(self) -> None:
        """The monitor is done: close every connection."""


def presence_feed(redis: RedisClient) -> PresenceFeed:
    """The feed for this client: sharded channels on a cluster, plain ones on one Redis."""
    if isinstance(redis, RedisCluster):
        return ShardedFeed(redis)
    return ChannelFeed(redis)


class ChannelFeed:
    """The partitions as plain channels of one Redis, over one pub/sub connection."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pubsub: PubSub | None = None

    async def open(self) -> None:
        await self.reset()
        self._pubsub = self.redis.pubsub()
        await self._pubsub.subscribe(*keys.PRESENCE_CHANNELS)

    async def get(self, timeout: float) -> bytes | FeedNote | None:
        assert self._pubsub is not None, "open() first"
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        return None if message is None else bytes(message["data"])

    async def reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    async def close(self) -> None:
        await self.reset()


class ShardedFeed:
    """The partitions as sharded channels of a cluster; one subscriber for the monitor's whole life.

    The subscriber's own repair loop (``ShardedSubscriber.run``) keeps the
    channels placed across failovers, so a Redis error seen by the monitor's
    reads leaves it alone (``reset`` does nothing); ``open`` only subscribes
    what is not placed yet.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self.subscriber = ShardedSubscriber(cluster)
        self.subscriber.on_lost = self._lost
        self.subscriber.on_resubscribed = self._resubscribed
        self._queue: asyncio.Queue[bytes | FeedNote] = asyncio.Queue()
        self._repair: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self._repair is None:
            self._repair = asyncio.create_task(self.subscriber.run(), name="admin presence feed")
        for channel in keys.PRESENCE_CHANNELS:
            name = channel.encode()
            if self.subscriber.owner(name) is None:
                await self.subscriber.subscribe(name, self._queue.put_nowait)

    async def get(self, timeout: float) -> bytes | FeedNote | None:
        try:
            async with asyncio.timeout(timeout):  # no task per call, unlike wait_for on 3.11
                return await self._queue.get()
        except TimeoutError:
            return None

    async def reset(self) -> None:
        """Nothing to drop: the subscriber repairs its links by itself."""

    async def close(self) -> None:
        if self._repair is not None:
            await cancel_and_wait([self._repair])  # run() closes every link on its way out
            self._repair = None
        await self.subscriber.close()

    def _lost(self, channels: set[bytes]) -> None:
        self._queue.put_nowait(FeedNote(
            "warning", f"Lost the presence events of {_partitions(channels)} (a Redis node is away); retrying"))

    def _resubscribed(self, channels: set[bytes]) -> None:
        self._queue.put_nowait(FeedNote(
            "info", f"Following the presence events of {_partitions(channels)} again "
                    "(connects and disconnects meanwhile are not in this log)", resync=True))


def _partitions(channels: set[bytes]) -> str:
    count = len(channels)
    return f"{count} of {len(keys.PRESENCE_CHANNELS)} partition{'s' if count != 1 else ''}"
