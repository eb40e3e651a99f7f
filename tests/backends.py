"""The Redis an integration test runs on: its own redis-server, or the session's 3-master cluster.

Issue 15: the chat, groups, files and resume tests must pass on both.  A test
module opts in by importing :func:`redis_server_on_each_backend`; from then on
``redis_server`` in that module -- and ``gateway_pair``/``two_gateways`` built
on it in tests/conftest.py -- is a :class:`RedisBackend`, and every test runs
twice, ``[single]`` and ``[cluster]`` (tests/conftest.py parametrises it).  A
test that only makes sense on one Redis process (it restarts it, or pokes the
one server's clients) says so with ``@pytest.mark.single_redis("why")``: its
``[cluster]`` run is skipped with that reason (``-ra`` lists it).

Run one backend with ``--backend single`` / ``--backend cluster`` (or
``-m "not cluster"``); CI runs both.

Why FLUSHALL rather than key namespaces between cluster tests: the gateways
choose their own keys (users, groups, the broadcast stream are named by the
test), so two tests would collide on ``cw:{all}:...`` whatever prefix a test
picked.  The flush waits (WAIT 1) until each master's replica has applied it,
so a replica promoted later in the next test does not bring old keys back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as redis_async
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.cluster import ClusterNode as SyncClusterNode

from common import keys
from common.redis import connect_redis_cluster
from common.redis_cluster import RedisCluster, wait_for
from common.sharded_pubsub import ShardedSubscriber
from tests.helpers import RedisServer

BACKENDS = ("single", "cluster")


@dataclass
class RedisBackend:
    """Where the test's gateways keep their state: ``url`` is what they get as ``--redis-url``."""

    kind: str  # "single" or "cluster"
    url: str
    server: RedisServer | None = None  # single: the test's own redis-server
    cluster: RedisCluster | None = None  # cluster: the session's cluster

    @property
    def is_cluster(self) -> bool:
        return self.cluster is not None

    def admin(self) -> Any:
        """An asyncio client for looking at (or poking) the state directly; the caller closes it (aclose).

        A ``Redis`` on one server, a ``RedisCluster`` on the cluster (which routes each key to its
        shard), so ``await admin.hget(keys.x(...), field)`` reads the same on both.
        """
        if self.cluster is not None:
            return connect_redis_cluster(self.url)
        return redis_async.Redis.from_url(self.url)

    def admin_sync(self) -> Any:
        """A synchronous client, as :meth:`admin` (closed by the caller)."""
        if self.cluster is not None:
            nodes = [SyncClusterNode(n.host, n.port) for n in self.cluster.master_nodes()]
            return redis_sync.RedisCluster(startup_nodes=nodes, require_full_coverage=False)
        return redis_sync.Redis.from_url(self.url)


def start_single(directory: Path) -> Iterator[RedisBackend]:
    """A redis-server of the test's own, as the ``redis_server`` fixture has always given."""
    server = RedisServer(directory)
    server.start()
    try:
        yield RedisBackend("single", server.url, server=server)
    finally:
        server.stop()


def reset_cluster(cluster: RedisCluster, timeout: float = 30.0) -> float:
    """Make the shared cluster as a fresh one: every node up, healthy, empty everywhere; seconds it took.

    A node a previous test killed and did not restart (it failed half way) is
    started again first, so each test begins with three masters and a linked
    replica each (:func:`whole`).  FLUSHALL runs on every master, and ``WAIT 1`` on the same
    connection returns once that master's replica has applied it.
    """
    began = time.monotonic()
    for node in cluster.nodes:
        if not node.alive():
            # Not as_replica: a master killed just before its test failed may come back before any
            # failover and stay a master.  ``whole`` below waits for the roles to settle either way.
            node.start()
    wait_for(lambda: whole(cluster), timeout, "the cluster whole again (each master with a linked replica)")
    for master in cluster.master_nodes():
        client = master.client()
        try:
            client.execute_command("FLUSHALL")  # type: ignore[no-untyped-call]
            acked = client.execute_command("WAIT", 1, int(timeout * 1000))  # type: ignore[no-untyped-call]
        finally:
            client.close()
        assert acked >= 1, f"the replica of {master.address} did not apply FLUSHALL within {timeout}s"
    return time.monotonic() - began


def whole(cluster: RedisCluster) -> bool:
    """Healthy, with exactly ``masters`` masters and one linked replica each (a restarted old master
    that still thinks it is one makes a fourth, until it hears of its demotion)."""
    if not cluster.healthy():
        return False
    masters = cluster.master_nodes()
    return len(masters) == cluster.masters and all(len(cluster.replicas_of(m)) == 1 for m in masters)


@pytest.fixture(name="redis_server")
def redis_server_on_each_backend(redis_backend: RedisBackend) -> RedisBackend:
    """``redis_server`` in a module that imports this: the parametrised backend (see the module doc)."""
    return redis_backend


def connect_where(where: str, request: pytest.FixtureRequest) -> tuple[Any, str]:
    """An asyncio client and its URL on the session's cluster (``where`` "cluster") or the test's own
    redis-server ("single"), for a test parametrised over both by hand; the caller closes the client."""
    if where == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return connect_redis_cluster(cluster.url), cluster.url
    server: RedisServer = request.getfixturevalue("redis_server")
    return redis_async.Redis.from_url(server.url), server.url


CLUSTER_STEP = 10.0  # deadline of one subscribe or close on the session's cluster


@pytest.fixture(name="client")
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    """``client`` in a module that imports this: an asyncio client of the session's cluster."""
    redis = connect_redis_cluster(redis_cluster.url)
    yield redis
    async with asyncio.timeout(CLUSTER_STEP):
        await redis.aclose()


async def delete_tagged(client: ClusterClient, *tags: str) -> None:
    """Delete every key of these hash tags (``u:<ukey>``, ``g:<gkey>``): a test's own keys, as the
    cluster is shared by the session."""
    for tag in tags:
        found = [key async for key in client.scan_iter(match=f"{keys.PREFIX}{{{tag}}}*", count=1000)]
        for key in found:
            await client.delete(key)


@contextlib.asynccontextmanager
async def sharded_subscriber(url: str, handlers: Mapping[str, Callable[[bytes], None]]
                             ) -> AsyncIterator[ShardedSubscriber]:
    """A running ShardedSubscriber on the cluster at ``url``, subscribed to each channel of ``handlers``;
    stopped and its client closed on the way out (a failed subscribe included)."""
    subscriber = ShardedSubscriber(connect_redis_cluster(url))
    runner = asyncio.create_task(subscriber.run())
    try:
        for channel, handler in handlers.items():
            async with asyncio.timeout(CLUSTER_STEP):
                await subscriber.subscribe(channel.encode(), handler)
        yield subscriber
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        async with asyncio.timeout(CLUSTER_STEP):
            await subscriber.cluster.aclose()
