"""docker-compose.cluster.yml, run under Podman: six Redis Cluster nodes, redis-init, presence,
three gateways and HAProxy, and chat through HAProxy across gateways and shards (issue 15).

Same harness as test_compose_cluster.py (tests/deploy/harness.py: stand-in images, Podman,
the network-only DNS override), with the cluster file's service list and redis-init as a
one-shot service (waited for until it exits 0, not health-checked).

Measured warm: about 70 s for the module (image rebuild 15 s, up and healthy 42 s, chat 0.3 s, down 7 s).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy.chat import chat_across_three_gateways
from tests.deploy.harness import CLUSTER_REDIS, CLUSTER_SERVICES, Cluster, Podman, brought_up

pytestmark = [pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def sharded(podman: Podman) -> Iterator[Cluster]:
    """docker-compose.cluster.yml, up: redis-init exited 0, every other container healthy, lb sees 3 gateways."""
    c = Cluster(podman, ["docker-compose.cluster.yml"], services=CLUSTER_SERVICES, one_shot=("redis-init",))
    with brought_up(c, timing=" (Redis Cluster)"):
        yield c


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


async def test_clients_through_haproxy_chat_across_gateways_and_shards(sharded: Cluster) -> None:
    await chat_across_three_gateways(sharded, "shard", "hello across shards")
