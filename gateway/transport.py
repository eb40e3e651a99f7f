"""The gateway's Redis transport, chosen by the client it was given: one Redis or a Redis Cluster.

* the router (pub/sub): gateway/router.py's one connection, or
  gateway/cluster_router.py's sharded subscriber (one link per master);
* the send path's auto-pipeline: gateway/pipeline.py's one connection, or
  gateway/cluster_pipeline.py's one pipeline per master;
* ``--durability replica``: the number of replicas a send waits for (``WAIT``),
  and the start-up check that some replica can ever answer it.

``replica`` on one Redis: ``WAIT 1`` needs a connected replica, and one with
none would answer 0 to every send, so every send would be ``unavailable``.
The gateway refuses to start that way (:func:`check_durability`) with an error
naming the fix.  If the replica disconnects later, sends answer
``unavailable`` until it is back, which is what the option asks for.  On a
cluster every master is meant to have a replica (a master without one leaves
its slots' sends ``unavailable`` the same way), so nothing is checked there.
"""

from __future__ import annotations

import logging

from redis.asyncio.cluster import RedisCluster

from common.config import Settings
from common.redis import REDIS_ERRORS

from .cluster_pipeline import ClusterAutoPipeline
from .cluster_router import ClusterRouter
from .pipeline import AutoPipeline, Pipeline
from .router import Router

log = logging.getLogger("chinwag.gateway")


class DurabilityError(ValueError):
    """``--durability replica`` cannot be honoured by this Redis (no replica to wait for)."""


def make_router(settings: Settings, redis: object) -> Router | ClusterRouter:
    """Sharded pub/sub on a cluster (sharing ``redis``'s slot map), else the one pub/sub connection."""
    if isinstance(redis, RedisCluster):
        return ClusterRouter(redis, keepalive=settings.redis_ping_interval, ping_timeout=settings.redis_ping_timeout)
    assert settings.redis_url
    return Router(settings.redis_url, keepalive=settings.redis_ping_interval, ping_timeout=settings.redis_ping_timeout)


def make_pipeline(settings: Settings, redis: object) -> Pipeline:
    """One auto-pipeline per master on a cluster (routed by ``redis``'s slot map), else one connection."""
    if isinstance(redis, RedisCluster):
        return ClusterAutoPipeline(redis)
    assert settings.redis_url
    return AutoPipeline(settings.redis_url)


def replicas_for(settings: Settings) -> int:
    """How many replicas a send waits for: 1 with ``--durability replica``, else none."""
    return 1 if settings.durability == "replica" else 0


async def check_durability(settings: Settings, redis: object) -> None:
    """Refuse ``--durability replica`` on a single Redis with no connected replica (DurabilityError).

    Redis unreachable at start: only a warning (the gateway serves and retries; until a replica
    answers ``WAIT`` every send is ``unavailable``, never acked unreplicated)."""
    if settings.durability != "replica" or isinstance(redis, RedisCluster):
        return
    try:
        info = await redis.info("replication")  # type: ignore[attr-defined]
    except REDIS_ERRORS as exc:
        log.warning("cannot check --durability replica now (%s); sends are unavailable until a replica acks",
                    type(exc).__name__)
        return
    if int(info.get("connected_slaves", 0)) < 1:
        raise DurabilityError(
            "--durability replica: this Redis has no connected replica, so WAIT 1 would fail every send; "
            "give it a replica (replicaof), use a Redis Cluster (redis+cluster://), or use --durability memory"
        )
