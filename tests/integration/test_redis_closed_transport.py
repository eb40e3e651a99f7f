"""uvloop's closed-transport RuntimeError is a Redis connection failure (issue 15, nemesis --redis-cluster).

On a master kill, redis-py's cluster client wrote to the killed master's pooled connection and uvloop
raised ``RuntimeError: unable to perform operation on <TCPTransport closed=True>``, which no
``except REDIS_ERRORS`` caught (the gateway's recovery task died of it).  common.redis makes every
connection it creates translate that into redis-py's ConnectionError.  These run under uvloop (the
programs' loop, common.runtime): asyncio's own transports do not raise it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from common.redis import TranslatingConnection, connect_redis, connect_redis_cluster, is_closed_transport
from common.redis_cluster import RedisCluster
from tests.helpers import RedisServer

uvloop = pytest.importorskip("uvloop")


def _run(test: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(test())


def test_only_the_closed_transport_message_counts() -> None:
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True reading=False 0x1>; "
                          "the handler is closed")
    assert is_closed_transport(closed)
    assert not is_closed_transport(RuntimeError("Event loop is closed"))  # a bug, not Redis being away
    assert not is_closed_transport(RuntimeError("coroutine ignored GeneratorExit"))
    assert not is_closed_transport(ValueError(str(closed)))


def test_a_write_to_a_closed_transport_raises_connection_error(redis_server: RedisServer) -> None:
    async def test() -> None:
        client = connect_redis(redis_server.url)
        try:
            assert client.connection_pool.connection_class is TranslatingConnection
            conn = await client.connection_pool.get_connection()
            assert conn._writer is not None
            conn._writer.transport.close()  # what a peer's reset leaves behind, under uvloop
            await asyncio.sleep(0)  # let uvloop close the handle
            with pytest.raises(RedisConnectionError) as caught:
                await conn.send_command("PING", check_health=False)
            assert isinstance(caught.value.__cause__, RuntimeError)
            await client.connection_pool.release(conn)
            assert await client.ping()  # the next command connects again
        finally:
            await client.aclose()

    _run(test)


def test_the_cluster_client_retries_a_write_to_a_killed_masters_connection(redis_cluster: RedisCluster) -> None:
    """The nemesis's case: the cluster client takes a pooled connection whose transport is closed (no
    health check on the way out of a node's pool) and writes to it.  With the translation it is a
    ConnectionError, which redis-py's cluster client retries (reconnecting); before, RuntimeError."""

    async def test() -> None:
        client = connect_redis_cluster(redis_cluster.url)
        key = "cw:{test-closed-transport}:k"
        try:
            await client.set(key, b"v")
            assert all(node.connection_class is TranslatingConnection for node in client.get_nodes())
            node = client.get_node_from_key(key)
            assert node is not None and node._free, "the SET left a free connection in the node's pool"
            for conn in node._free:
                if conn._writer is not None:
                    conn._writer.transport.close()
            await asyncio.sleep(0)
            assert await client.get(key) == b"v"
        finally:
            await client.delete(key)
            await client.aclose()

    _run(test)
