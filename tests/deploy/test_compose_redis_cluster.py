"""docker-compose.cluster.yml, run under Podman: six Redis Cluster nodes, redis-init, presence,
three gateways and HAProxy, and chat through HAProxy across gateways and shards (issue 15).

Same harness as test_compose_cluster.py (tests/deploy/harness.py: stand-in images, Podman,
the network-only DNS override), with the cluster file's service list and redis-init as a
one-shot service (waited for until it exits 0, not health-checked).

Measured warm: about 70 s for the module (image rebuild 15 s, up and healthy 42 s, chat 0.3 s, down 7 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from client import ChatClient
from client.errors import ConnectFailed
from protocol import frames as f
from tests.deploy.harness import CLUSTER_REDIS, CLUSTER_SERVICES, Cluster, Podman, timed
from tests.helpers import wait_for_event

pytestmark = [pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def sharded(podman: Podman) -> Iterator[Cluster]:
    """docker-compose.cluster.yml, up: redis-init exited 0, every other container healthy, lb sees 3 gateways."""
    c = Cluster(podman, ["docker-compose.cluster.yml"], services=CLUSTER_SERVICES, one_shot=("redis-init",))
    try:
        with timed("compose up (Redis Cluster)"):
            try:
                c.up()
            except BaseException:
                print(c.logs())
                raise
        yield c
    finally:
        with timed("compose down (Redis Cluster)"):
            c.remove()


def _cluster_nodes(cluster: Cluster) -> list[list[str]]:
    out = cluster.podman("exec", cluster.containers("redis-1")[0], "redis-cli", "cluster", "nodes").stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def test_redis_init_formed_three_masters_with_a_replica_each(sharded: Cluster) -> None:
    nodes = _cluster_nodes(sharded)
    masters = [n for n in nodes if "master" in n[2]]
    replicas = [n for n in nodes if "slave" in n[2]]
    assert len(masters) == 3 and len(replicas) == 3
    assert {r[3] for r in replicas} == {m[0] for m in masters}  # one replica per master
    assert all(len(sharded.containers(name)) == 1 for name in CLUSTER_REDIS)


def test_redis_init_again_changes_nothing(sharded: Cluster) -> None:
    before = sorted(n[0] for n in _cluster_nodes(sharded))
    init = sharded.containers("redis-init")[0]
    sharded.podman("start", "--attach", init, timeout=120)  # the same one-shot, run again
    assert "the cluster exists already" in sharded.podman("logs", init).stdout
    assert sharded.exited_ok(init)
    assert sorted(n[0] for n in _cluster_nodes(sharded)) == before


async def _open(cluster: Cluster, user: str, within: float = 90) -> ChatClient:
    deadline = time.monotonic() + within
    while True:
        try:
            return await ChatClient.open(cluster.url, user, "secret-pw", request_timeout=60, backoff_cap=1.0)
        except ConnectFailed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # pacing between bounded attempts, not synchronisation


async def test_clients_through_haproxy_chat_across_gateways_and_shards(sharded: Cluster) -> None:
    clients = [await _open(sharded, f"shard{i}") for i in range(3)]
    try:
        assert len({c.node for c in clients}) == 3  # leastconn over three idle gateways
        ack = await clients[0].send("@shard1", "hello across shards")
        got = await wait_for_event(clients[1], lambda e: isinstance(e, f.Message) and e.id == ack.id, 30)
        assert isinstance(got, f.Message) and got.body == "hello across shards"
        await clients[2].send("*", "to everyone")
        for client in clients[:2]:
            await wait_for_event(client, lambda e: isinstance(e, f.Message) and e.body == "to everyone", 30)
    finally:
        for client in clients:
            await client.close()
