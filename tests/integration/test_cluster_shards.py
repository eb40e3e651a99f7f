"""``chinwag-cluster up --redis-shards 3``: presence and the gateways on a real 3+3 Redis Cluster (issue 15)."""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

from chinwag.cluster import free_base_port
from common.http import http_status
from common.redis import connect_redis_cluster
from common.redis_cluster import RedisCluster
from protocol import frames as f
from tests.helpers import Clients, Processes, wait_for_event, wait_until
from tests.integration.test_cluster import ClusterProc, started_clusters  # noqa: F401 (cluster_factory)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


async def test_up_with_redis_shards_runs_presence_and_gateways_on_the_cluster(
    tmp_path: Path, clients: Clients, cluster_factory: list[ClusterProc]
) -> None:
    base = free_base_port("127.0.0.1", 3)
    cluster = ClusterProc(["--gateways", "3", "--redis-shards", "3", "--base-port", str(base)], tmp_path)
    cluster_factory.append(cluster)
    cluster.wait_ready()
    text = "\n".join(cluster.lines)
    url = re.search(r"redis\s+(redis\+cluster://\S+)", text)
    assert url, text
    assert len(re.findall(r"^\s+\S+:\d+\s+master", text, re.M)) == 3
    assert len(re.findall(r"^\s+\S+:\d+\s+replica of", text, re.M)) == 3
    gws = cluster.gateways()
    assert len(gws) == 3
    assert all(http_status(m.replace("/metrics", "/readyz")) == 200 for _, m in gws)
    presence = next(line for line in cluster.lines if line.strip().startswith("presence")).split()[-1]
    assert http_status(presence.replace("/metrics", "/readyz")) == 200

    (url1, _), (url2, _), (url3, _) = gws
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    carol = await clients.login(url3, "carol")
    await alice.send("@bob", "across gateways and shards")
    got = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    assert got.body == "across gateways and shards"  # type: ignore[union-attr]
    await carol.send("*", "to everyone")
    for who in (alice, bob):
        await wait_for_event(who, lambda e: isinstance(e, f.Message) and e.to == "*")
    await clients.close_all()

    assert cluster.stop() == 0
    ports = [int(p) for p in re.findall(r":(\d+)", url.group(1))]
    assert not any(_answers(port) for port in ports)  # every Redis node stopped with the launcher
    assert not any(_answers(int(u.rsplit(":", 1)[1])) for u, _ in gws)


def test_up_runs_gateways_on_a_cluster_started_elsewhere(
    tmp_path: Path, redis_cluster: RedisCluster, cluster_factory: list[ClusterProc]
) -> None:
    base = free_base_port("127.0.0.1", 1)
    cluster = ClusterProc(["--gateways", "1", "--base-port", str(base), "--redis-url", redis_cluster.url], tmp_path)
    cluster_factory.append(cluster)
    cluster.wait_ready()
    assert "(external)" in "\n".join(cluster.lines)
    ((_, metrics),) = cluster.gateways()
    assert http_status(metrics.replace("/metrics", "/readyz")) == 200
    assert cluster.stop() == 0
    assert redis_cluster.healthy()  # a cluster it did not start, it leaves running


async def test_presence_runs_on_a_cluster_url(redis_cluster: RedisCluster, processes: Processes) -> None:
    """chinwag-presence builds a cluster client from the URL: ready, and sweeping, on the cluster."""
    proc = processes.presence(redis_cluster.url)
    ready = f"http://127.0.0.1:{proc.http_port}/readyz"
    wait_until(lambda: http_status(ready) == 200, 20, "presence ready on the cluster")
    redis = connect_redis_cluster(redis_cluster.url)
    try:
        assert (await redis.cluster_info())["cluster_state"] == "ok"
    finally:
        await redis.aclose()

