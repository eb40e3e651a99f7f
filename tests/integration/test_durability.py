"""``--durability replica`` on one Redis: WAIT 1 behind each send script (gateway/pipeline.py, gateway/transport.py).

A send is acked only once a replica has it; without one it is ``unavailable``
(NotReplicated), and the gateway refuses to start with ``replica`` on a Redis
that has no replica at all.  The cluster's side is in test_cluster_transport.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hiredis
import pytest
import redis.asyncio as aioredis

from common import keys
from common.config import Settings
from gateway.dispatch import redis_failure
from gateway.pipeline import AutoPipeline, NotReplicated
from gateway.store import Store
from gateway.transport import DurabilityError, check_durability, replicas_for
from protocol.errors import Unavailable
from tests.helpers import INCR, RedisServer, async_wait_until


@pytest.fixture
def replica(tmp_path: Path, redis_server: RedisServer) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "replica", appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def _linked(admin: aioredis.Redis, replica: RedisServer, master: RedisServer) -> None:
    follower = aioredis.Redis.from_url(replica.url)
    try:
        await follower.execute_command("REPLICAOF", "127.0.0.1", str(master.port))

        async def up() -> bool:
            return (await follower.info("replication")).get("master_link_status") == "up"
        await async_wait_until(up, 10, "the replica's link up")
        await async_wait_until(lambda: _slaves(admin), 10, "the master to count its replica")
    finally:
        await follower.aclose()


async def _slaves(admin: aioredis.Redis) -> bool:
    return int((await admin.info("replication")).get("connected_slaves", 0)) >= 1


async def test_without_a_replica_a_send_is_not_acked_and_replica_durability_is_refused(
        redis_server: RedisServer, admin: aioredis.Redis) -> None:
    pipe = AutoPipeline(redis_server.url, wait_timeout=0.1)
    try:
        with pytest.raises(NotReplicated):
            await pipe.evalsha(INCR, ["n"], [], replicas=1)
        assert await admin.get("n") == b"1"  # it ran: the client's retry with its ref is deduped
        assert await pipe.evalsha(INCR, ["n"], []) == 2  # durability "memory": acked as before
    finally:
        await pipe.aclose()
    assert isinstance(redis_failure(NotReplicated("x")), Unavailable)  # what the client is told
    settings = Settings(redis_url=redis_server.url, durability="replica")
    with pytest.raises(DurabilityError, match="no connected replica"):
        await check_durability(settings, admin)
    await check_durability(settings.with_(durability="memory"), admin)  # nothing to check
    assert replicas_for(settings) == 1 and replicas_for(settings.with_(durability="memory")) == 0


async def test_with_a_replica_sends_ack_once_it_has_them(
        redis_server: RedisServer, replica: RedisServer, admin: aioredis.Redis) -> None:
    await _linked(admin, replica, redis_server)
    await check_durability(Settings(redis_url=redis_server.url, durability="replica"), admin)
    pipe = AutoPipeline(redis_server.url, wait_timeout=0.3)
    store = Store(admin, pipeline=pipe, replicas=1)
    follower = aioredis.Redis.from_url(replica.url)
    try:
        stored = await store.send_broadcast(b'"alice"', "alice", "hello", ref="r1")
        assert stored is not None
        assert await pipe.evalsha(INCR, ["n"], [], replicas=1) == 1
        assert await follower.get("n") == b"1"  # acked means the replica has it
        # NOSCRIPT behind a WAIT, with the replica stopped: not acked (the order of the two WAITs is
        # pinned by the fake server below: Redis 7.0's WAIT counts every write of the master, so here
        # the first WAIT says 0 too).
        await admin.script_flush()
        assert await admin.execute_command("WAIT", 1, 5000) == 1  # the replica has everything, the flush too
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated):
                await pipe.evalsha(INCR, ["n"], [], replicas=1)
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        assert await admin.get("n") == b"2"
        assert await asyncio.gather(*(pipe.evalsha(INCR, ["n"], [], replicas=1) for _ in range(20))) == list(
            range(3, 23))
    finally:
        await follower.aclose()
        await pipe.aclose()


async def test_a_wait_answered_before_a_resent_script_does_not_ack_it() -> None:
    """EVALSHA + WAIT answered NOSCRIPT + 1: that 1 was counted before the script ran (EVAL comes after
    it), so it is thrown away; the WAIT written behind the EVAL decides.  The fake Redis here answers
    WAIT with 1 until it has run an EVAL and 0 after (a replica that stopped just then)."""
    evals = 0

    async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal evals
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                name = command[0].upper()
                if name == b"EVALSHA":
                    writer.write(b"-NOSCRIPT No matching script.\r\n")
                elif name == b"EVAL":
                    evals += 1
                    writer.write(b":7\r\n")
                elif name == b"WAIT":
                    writer.write(b":0\r\n" if evals else b":1\r\n")
                else:
                    writer.write(b"+OK\r\n")
        writer.close()

    server = await asyncio.start_server(fake, "127.0.0.1", 0)
    pipe = AutoPipeline(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0", timeout=2.0)
    try:
        with pytest.raises(NotReplicated):
            await asyncio.wait_for(pipe.evalsha(INCR, ["n"], [], replicas=1), 5)
        assert evals == 1
    finally:
        await pipe.aclose()
        server.close()
        await server.wait_closed()


async def test_a_send_not_acked_for_want_of_a_replica_is_not_delivered_live(
        redis_server: RedisServer, admin: aioredis.Redis) -> None:
    """The gap the failover chaos test found, closed: a send whose ``WAIT`` fails (here: no replica; there:
    the master killed before its replica had it) used to be published already, so its recipients saw it,
    and the sender's retry on the promoted replica, which never had it nor its dedupe key, stored and
    published it again under a new id: one message shown twice.  Now nothing is published before the
    ``WAIT`` says the replica has it (gateway/store.py, store_lua.PUBLISH_UPTO)."""
    pipe = AutoPipeline(redis_server.url, wait_timeout=0.1)
    store = Store(admin, pipeline=pipe, replicas=1)
    listener = admin.pubsub()
    await listener.subscribe(keys.BROADCAST_CHANNEL)
    got: list[bytes] = []

    async def heard(marker: bytes) -> bool:
        while (message := await listener.get_message(ignore_subscribe_messages=True, timeout=0.05)) is not None:
            got.append(message["data"])
        return marker in got

    try:
        with pytest.raises(NotReplicated):
            await store.send_broadcast(b'"alice"', "alice", "not acked", ref="r1")
        await admin.publish(keys.BROADCAST_CHANNEL, b"marker")  # after the send: its publish, if any, is ahead
        await async_wait_until(lambda: heard(b"marker"), 5, "the marker")
        assert got == [b"marker"], f"published before WAIT said a replica had it: {got[:-1]!r}"
    finally:
        await listener.aclose()
        await pipe.aclose()
