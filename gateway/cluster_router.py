"""The router on a Redis Cluster: sharded pub/sub (``SSUBSCRIBE``) through :class:`ShardedSubscriber`.

Same interface as :class:`gateway.router.Router` (``subscribe``, ``unsubscribe``,
``set_handler``, ``run``, ``healthy``, ``live``, ``channels``, ``reconnects``
and the ``on_lost``/``on_resubscribed``/``before_message`` hooks), so the
gateway, its logins and its group relay use either without knowing which.

What differs is what can be lost: one master's link at a time, not the one
connection.  ``on_lost(channels)`` and ``on_resubscribed(channels)`` name the
channels (str) of that shard; gateway/recovery.py holds and replays (today:
everything, see ``Recovery.pubsub_lost``).  ``live`` is "no channel dark":
a recovery that finishes while another shard is still dark keeps holding,
and the resubscribe of that shard starts the next catch-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.asyncio.cluster import RedisCluster

from common.sharded_pubsub import CLUSTER_ERRORS, ShardedSubscriber
from protocol.errors import Unavailable

from .router import Handler, guarded

log = logging.getLogger("chinwag.router")

ChannelsHook = Callable[[set[str]], None]


class ClusterRouter:
    """Channels -> handlers over sharded pub/sub, one link per master, repaired by :meth:`run`."""

    def __init__(self, cluster: RedisCluster, *, keepalive: float = 1.0, ping_timeout: float = 3.0) -> None:
        self.subscriber = ShardedSubscriber(cluster, keepalive=keepalive, ping_timeout=ping_timeout)
        self.subscriber.on_lost = self._lost
        self.subscriber.on_resubscribed = self._resubscribed
        self.keepalive = keepalive
        self.ping_timeout = ping_timeout
        # As Router's, but told which channels: lost the moment their shard's link goes, resubscribed
        # once they are confirmed again (never for the first placement).
        self.on_lost: ChannelsHook | None = None
        self.on_resubscribed: ChannelsHook | None = None
        self.before_message: Callable[[], None] | None = None
        self._fixed: set[bytes] = set()  # channels set by set_handler: the gateway's own, for its whole life

    # -- the Router interface -------------------------------------------------

    async def subscribe(self, channel: str, handler: Handler, timeout: float = 5.0) -> None:
        """Route ``channel`` to ``handler`` once its master confirms; Unavailable if that cannot be done now."""
        self.subscriber.confirm_timeout = timeout
        try:
            await self.subscriber.subscribe(channel.encode(), self._wrap(channel, handler))
        except CLUSTER_ERRORS as exc:
            log.info("cannot subscribe %s now (%s: %s)", channel, type(exc).__name__, exc)
            raise Unavailable() from None

    async def unsubscribe(self, channel: str) -> None:
        """Stop routing ``channel``; best effort (a lost link drops it anyway)."""
        self._fixed.discard(channel.encode())
        await self.subscriber.unsubscribe(channel.encode())

    def set_handler(self, channel: str, handler: Handler) -> None:
        """Route ``channel`` to ``handler`` (no round trip); a channel not yet subscribed is placed by ``run``."""
        self._fixed.add(channel.encode())
        self.subscriber.set_handler(channel.encode(), self._wrap(channel, handler))

    @property
    def channels(self) -> int:
        return self.subscriber.channels

    @property
    def reconnects(self) -> int:
        return self.subscriber.resubscribes

    @property
    def live(self) -> bool:
        """No channel is dark since a loss (one placed for the first time does not count)."""
        return not self.subscriber.dark

    @property
    def healthy(self) -> bool:
        """Readiness: no channel dark, and the gateway's own channels (``set_handler``) confirmed.

        Not ``ShardedSubscriber.healthy``: that counts a user's channel still being subscribed by
        its login as missing, and readiness would flicker with every login."""
        return self.live and all(self.subscriber.owner(ch) is not None for ch in self._fixed)

    async def run(self) -> None:
        """Keep every subscription in force (cancel to stop; every link is closed then)."""
        await self.subscriber.run()

    # -- internals ------------------------------------------------------------

    def _wrap(self, channel: str, handler: Handler) -> Handler:
        def deliver(frame: bytes) -> None:
            guarded(self.before_message, channel)
            handler(frame)  # ShardedSubscriber logs a handler's failure and goes on
        return deliver

    def _lost(self, channels: set[bytes]) -> None:
        if self.on_lost is not None:
            self.on_lost({ch.decode() for ch in channels})

    def _resubscribed(self, channels: set[bytes]) -> None:
        if self.on_resubscribed is not None:
            self.on_resubscribed({ch.decode() for ch in channels})
