"""The gateway's Redis transport on the session's real 3+3 cluster (issue 15).

gateway/cluster_pipeline.py: one write per master per loop turn, MOVED and ASK
followed (the command runs once), WAIT 1 for ``--durability replica``, a dead
master failing only its own commands; gateway/cluster_router.py: a SPUBLISH
reaches its handler, and after a master's kill the router reports the loss,
resubscribes on the promoted replica and delivers again.

Keys are made per test (a uuid in the hash tag) and deleted after; a test that
moves a slot moves it back, one that kills a master restarts it and waits until
the cluster is whole (the fixture is shared by the session).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from common.redis import connect_redis_cluster
from common.redis_cluster import ClusterNode, RedisCluster
from gateway.cluster_pipeline import ClusterAutoPipeline
from gateway.cluster_router import ClusterRouter
from gateway.pipeline import NotReplicated
from tests.helpers import INCR, async_wait_until
from tests.integration.test_redis_cluster import FAILOVER_DEADLINE, STEP, _move_slot, _stopped, _within


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    redis = connect_redis_cluster(redis_cluster.url)
    yield redis
    await _within(STEP, "closing the cluster client", redis.aclose())


@pytest.fixture
async def pipeline(client: ClusterClient) -> AsyncIterator[ClusterAutoPipeline]:
    pipe = ClusterAutoPipeline(client, timeout=3.0, wait_timeout=0.5)
    yield pipe
    await _within(STEP, "closing the pipeline", pipe.aclose())


def keys_on_every_master(redis_cluster: RedisCluster, per_master: int) -> dict[str, list[str]]:
    """``per_master`` fresh keys (own hash tags) owned by each master, by master address."""
    owners: dict[str, list[str]] = {m.address: [] for m in redis_cluster.master_nodes()}
    run = uuid.uuid4().hex[:8]
    i = 0
    while any(len(found) < per_master for found in owners.values()):
        key = f"cw:test:{{t{run}:{i}}}:n"
        i += 1
        found = owners[redis_cluster.master_for_key(key).address]
        if len(found) < per_master:
            found.append(key)
    return owners


async def test_a_turns_commands_go_out_as_one_write_per_master(
        redis_cluster: RedisCluster, client: ClusterClient, pipeline: ClusterAutoPipeline) -> None:
    owners = keys_on_every_master(redis_cluster, 40)
    everything = [key for keys in owners.values() for key in keys]
    try:
        await asyncio.gather(*(pipeline.evalsha(INCR, [keys[0]], []) for keys in owners.values()))  # connected
        before = pipeline.node_batches()
        assert set(before) == set(owners)  # one pipeline (one connection) per master
        results = await asyncio.gather(*(pipeline.evalsha(INCR, [key], []) for key in everything))
        assert results == [2 if key in (k[0] for k in owners.values()) else 1 for key in everything]
        after = pipeline.node_batches()
        assert {name: after[name] - before[name] for name in owners} == {name: 1 for name in owners}
        # Each key's INCR ran on its own master, once.
        for key in everything:
            assert await client.get(key) in (b"1", b"2")
    finally:
        await client.delete(*everything)


def _empty_slot_key(redis_cluster: RedisCluster) -> tuple[str, int]:
    while True:
        key = f"cw:test:{{m{uuid.uuid4().hex[:10]}}}:n"
        slot = key_slot(key.encode())
        if redis_cluster.master_for_key(key).ask("CLUSTER", "COUNTKEYSINSLOT", str(slot)) == 0:
            return key, slot


async def test_a_moved_slot_is_followed_and_the_script_runs_once(
        redis_cluster: RedisCluster, client: ClusterClient, pipeline: ClusterAutoPipeline) -> None:
    key, slot = _empty_slot_key(redis_cluster)
    source = redis_cluster.master_for_key(key)
    target = next(m for m in redis_cluster.master_nodes() if m is not source)
    assert await pipeline.evalsha(INCR, [key], []) == 1  # the pipeline's map: the slot on ``source``
    await client.delete(key)
    _move_slot(redis_cluster, slot, source, target)
    try:
        # The map still names ``source``, which answers -MOVED: the script did not run there.
        assert await pipeline.evalsha(INCR, [key], []) == 1
        assert pipeline.redirects == 1
        assert await pipeline.evalsha(INCR, [key], []) == 2  # the map learnt the move: no redirect now
        assert pipeline.redirects == 1
        assert target.ask("GET", key) == b"2"
    finally:
        await client.delete(key)
        _move_slot(redis_cluster, slot, target, source)


async def test_a_slot_being_migrated_is_asked_for_on_its_target(
        redis_cluster: RedisCluster, client: ClusterClient, pipeline: ClusterAutoPipeline) -> None:
    key, slot = _empty_slot_key(redis_cluster)
    source = redis_cluster.master_for_key(key)
    target = next(m for m in redis_cluster.master_nodes() if m is not source)
    assert await pipeline.evalsha(INCR, [key], []) == 1
    await client.delete(key)
    target_id, source_id = target.ask("CLUSTER", "MYID"), source.ask("CLUSTER", "MYID")
    assert isinstance(target_id, bytes) and isinstance(source_id, bytes)
    target.ask("SCRIPT", "FLUSH")  # the target has never seen the script: ASKING must carry its body
    assert target.ask("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id) == b"OK"
    assert source.ask("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == b"OK"
    try:
        # The key is not on the source any more: it answers -ASK, and ASKING + EVAL run it on the target.
        assert await pipeline.evalsha(INCR, [key], []) == 1
        assert pipeline.redirects == 1
    finally:
        for master in redis_cluster.master_nodes():  # the migration finished: the slot is the target's
            master.ask("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
    try:
        assert target.ask("GET", key) == b"1"  # it ran once, on the target
    finally:
        await client.delete(key)
        _move_slot(redis_cluster, slot, target, source)


async def test_wait_1_acks_once_the_replica_has_the_write_and_refuses_otherwise(
        redis_cluster: RedisCluster, client: ClusterClient, pipeline: ClusterAutoPipeline) -> None:
    key = f"cw:test:{{w{uuid.uuid4().hex[:8]}}}:n"
    master = redis_cluster.master_for_key(key)
    replica = redis_cluster.replicas_of(master)[0]
    try:
        assert await pipeline.evalsha(INCR, [key], [], replicas=1) == 1
        assert await _replica_get(replica, key) == b"1"  # acked means the replica has it
        master.ask("SCRIPT", "FLUSH")  # NOSCRIPT: the EVAL goes after the first WAIT, so a second WAIT follows it
        assert await pipeline.evalsha(INCR, [key], [], replicas=1) == 2
        assert await _replica_get(replica, key) == b"2"
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)  # the replica cannot acknowledge (shorter than the node timeout)
        try:
            with pytest.raises(NotReplicated):
                await pipeline.evalsha(INCR, [key], [], replicas=1)
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        assert await client.get(key) == b"3"  # it ran on the master: the client's retry is deduped by its ref
        assert await pipeline.evalsha(INCR, [key], [], replicas=1) == 4  # the replica caught up, acks again
    finally:
        await client.delete(key)


async def _replica_get(replica: ClusterNode, key: str) -> object:
    def read() -> object:
        r = replica.client()
        try:
            r.execute_command("READONLY")  # type: ignore[no-untyped-call]
            return r.get(key)
        finally:
            r.close()
    return await asyncio.to_thread(read)


async def test_a_router_delivers_and_recovers_after_its_master_is_killed_and_the_pipeline_follows(
        redis_cluster: RedisCluster, client: ClusterClient, pipeline: ClusterAutoPipeline) -> None:
    owners = keys_on_every_master(redis_cluster, 1)
    master = redis_cluster.master_for_key(owners[next(iter(owners))][0])
    doomed_key = owners[master.address][0]
    other_keys = [keys[0] for name, keys in owners.items() if name != master.address]
    channel = doomed_key.replace(":n", ":c")  # same hash tag: same slot, same master
    got: list[bytes] = []
    events: list[tuple[str, set[str]]] = []
    router = ClusterRouter(connect_redis_cluster(redis_cluster.url), keepalive=0.5, ping_timeout=1.5)
    router.on_lost = lambda chans: events.append(("lost", chans))
    router.on_resubscribed = lambda chans: events.append(("back", chans))
    checks: list[str] = []
    router.before_message = lambda: checks.append("checked")
    runner = asyncio.create_task(router.run())
    try:
        await _within(STEP, "subscribing", router.subscribe(channel, got.append))
        assert router.live and router.healthy and router.channels == 1
        assert await client.spublish(channel, b"one") == 1
        await async_wait_until(lambda: got == [b"one"], 5, "the first message")
        assert checks == ["checked"]
        for key in [doomed_key, *other_keys]:
            assert await pipeline.evalsha(INCR, [key], []) == 1

        failover = await _within(30, "the failover", asyncio.to_thread(redis_cluster.kill_master, master, 20))
        try:
            # Only the dead master's commands fail; the others' are answered as before.
            with pytest.raises(RedisConnectionError):
                await pipeline.evalsha(INCR, [doomed_key], [])
            assert await asyncio.gather(*(pipeline.evalsha(INCR, [k], []) for k in other_keys)) == [2] * len(other_keys)
            await async_wait_until(lambda: ("back", {channel}) in events, FAILOVER_DEADLINE, "resubscribed")
            assert events[0] == ("lost", {channel}) and router.live
            assert await client.spublish(channel, b"two") == 1
            await async_wait_until(lambda: got == [b"one", b"two"], 5, "delivery from the promoted replica")

            async def answered() -> bool:
                try:
                    await pipeline.evalsha(INCR, [doomed_key], [])
                except RedisConnectionError:
                    return False  # until the background refresh of the slot map names the new master
                return True
            await async_wait_until(answered, FAILOVER_DEADLINE, "the pipeline on the promoted replica")
            assert failover.promoted.ask("EXISTS", doomed_key) == 1  # it ran there
        finally:
            await _within(30, f"restarting {master.address}", asyncio.to_thread(redis_cluster.restart, master, 20))
    finally:
        await _stopped(runner)
        await _within(STEP, "closing the router's client", router.subscriber.cluster.aclose())
        await client.delete(doomed_key, *other_keys)


async def test_a_failing_before_message_does_not_stop_cluster_delivery(
        redis_cluster: RedisCluster, client: ClusterClient, caplog: pytest.LogCaptureFixture) -> None:
    router = ClusterRouter(connect_redis_cluster(redis_cluster.url))
    got: list[bytes] = []

    def broken() -> None:
        raise RuntimeError("lease check failed")

    router.before_message = broken
    channel = f"cw:test:{{h{uuid.uuid4().hex[:8]}}}:c"
    router.set_handler(channel, got.append)  # before run: run places it
    runner = asyncio.create_task(router.run())
    try:
        await async_wait_until(lambda: router.healthy, 5, "the channel placed by run")
        assert await client.spublish(channel, b"one") == 1
        await async_wait_until(lambda: got == [b"one"], 5, "delivery despite before_message")
        assert "before_message failed" in caplog.text
        await router.unsubscribe(channel)
        assert router.channels == 0
    finally:
        await _stopped(runner)
        await _within(STEP, "closing the router's client", router.subscriber.cluster.aclose())
