"""Parsing ``redis+cluster://`` URLs, and which client each kind of URL gets."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common.redis import (
    ClusterUrl,
    connect_any,
    connect_redis,
    connect_redis_cluster,
    is_cluster_url,
    parse_cluster_url,
)


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+cluster://10.0.0.1:7000", ClusterUrl((("10.0.0.1", 7000),))),
    ("redis+cluster://a:7000,b:7001,c:7002/0",
     ClusterUrl((("a", 7000), ("b", 7001), ("c", 7002)))),
    ("redis+cluster://host", ClusterUrl((("host", 6379),))),
    ("redis+cluster://[::1]:7000,[fe80::2]", ClusterUrl((("::1", 7000), ("fe80::2", 6379)))),
    ("REDIS+CLUSTER://h:1/", ClusterUrl((("h", 1),))),
    ("rediss+cluster://h:7000", ClusterUrl((("h", 7000),), tls=True)),
    ("redis+cluster://:s%40cret@h:7000", ClusterUrl((("h", 7000),), None, "s@cret")),
    ("redis+cluster://alice:pw@h:7000,i:7001", ClusterUrl((("h", 7000), ("i", 7001)), "alice", "pw")),
])
def test_cluster_urls_parse(url: str, expected: ClusterUrl) -> None:
    assert parse_cluster_url(url) == expected
    assert is_cluster_url(url)


@pytest.mark.parametrize(("url", "complaint"), [
    ("redis://h:7000", "not a cluster URL"),
    ("redis+cluster://", "needs host:port"),
    ("redis+cluster://a:7000,,b:7001", "needs host:port"),
    ("redis+cluster://a:7000/1", "only database 0"),
    ("redis+cluster://a:7000?timeout=1", "no query"),
    ("redis+cluster://a:x", "bad port"),
    ("redis+cluster://a:70000", "bad port"),
    ("redis+cluster://a:0", "bad port"),
    ("redis+cluster://:7000", "empty host"),
    ("redis+cluster://::1:7000", "must be in brackets"),
    ("redis+cluster://[::1", "bad IPv6"),
    ("redis+cluster://u:secret@a:x", "bad port"),
])
def test_bad_cluster_urls_say_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        parse_cluster_url(url)
    assert "secret" not in str(caught.value)  # credentials never reach a log


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://h/1", "unix:///tmp/r.sock", "redis-cluster"])
def test_single_redis_urls_are_not_cluster_urls(url: str) -> None:
    assert not is_cluster_url(url)


async def test_each_kind_of_url_gets_its_client() -> None:
    single = connect_redis("redis://127.0.0.1:1/0")  # nothing connects until the first command
    assert isinstance(single, Redis)
    await single.aclose()
    cluster = connect_redis_cluster("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    assert isinstance(cluster, RedisCluster)
    assert [(n.host, n.port) for n in cluster.startup_nodes] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    await cluster.aclose()


def test_connect_redis_refuses_a_cluster_url() -> None:
    with pytest.raises(ValueError, match="connect_redis takes a single Redis URL"):
        connect_redis("redis+cluster://127.0.0.1:7000")
    with pytest.raises(ValueError, match="bad port"):  # a malformed one says so first
        connect_redis("redis+cluster://127.0.0.1:x")


async def test_connect_any_picks_the_client_by_scheme() -> None:
    single = connect_any("redis://127.0.0.1:1/0")
    assert isinstance(single, Redis)
    await single.aclose()
    cluster = connect_any("redis+cluster://127.0.0.1:1,127.0.0.1:2", max_connections=4)
    assert isinstance(cluster, RedisCluster)
    assert [(n.host, n.port) for n in cluster.startup_nodes] == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    await cluster.aclose()
    with pytest.raises(ValueError, match="bad port"):
        connect_any("redis+cluster://127.0.0.1:x")
