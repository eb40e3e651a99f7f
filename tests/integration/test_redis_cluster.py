"""A real 3+3 Redis Cluster: sharded pub/sub, single-slot scripts, and a master's failover.

The cluster is the session's (``redis_cluster`` in tests/conftest.py).  The
failover tests kill -9 a master, measure how long its replica takes to be
promoted and how long a sharded subscriber stays dark, then restart the killed
node (it rejoins as a replica) so the cluster is whole for the next test.

Every await here has a deadline (``_within``, ``async_wait_until``, the
cluster's own timeouts) and tasks are stopped with ``cancel_and_wait``: on
Python 3.11 redis-py can swallow a ``cancel()`` (``asyncio.wait_for`` around
its socket writes), and a bare ``task.cancel(); await task`` then waited for a
publisher that kept publishing, until pytest-timeout killed the test with no
message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest
from redis.asyncio.cluster import ClusterNode as PyClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from common.redis import REDIS_ERRORS, connect_redis_cluster
from common.redis_cluster import ClusterNode, RedisCluster
from common.runtime import cancel_and_wait
from common.sharded_pubsub import ShardedSubscriber
from tests.helpers import async_wait_until

FAILOVER_DEADLINE = 15.0  # node timeout 2 s + election; measured about 4 to 5 s here
STEP = 10.0  # deadline of one command, subscribe or close (socket timeouts are 2 s and 5 s)

T = TypeVar("T")


async def _within(seconds: float, what: str, awaitable: Awaitable[T]) -> T:
    """``awaitable``, or an AssertionError naming ``what`` after ``seconds`` (not a pytest-timeout hang)."""
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await awaitable
    except TimeoutError:
        if deadline.expired():
            raise AssertionError(f"{what}: not done after {seconds:.0f}s") from None
        raise


async def _stopped(*tasks: asyncio.Task[None]) -> None:
    """Cancel ``tasks`` until they end (bounded: cancel_and_wait gives up after 5 s) and say if one would not."""
    await cancel_and_wait(tasks)
    running = [task.get_name() for task in tasks if not task.done()]
    assert not running, f"still running after being cancelled for 5 s: {running}"


async def _running(subscriber: ShardedSubscriber) -> asyncio.Task[None]:
    return asyncio.create_task(subscriber.run())


async def _stop(subscriber: ShardedSubscriber, runner: asyncio.Task[None]) -> None:
    await _stopped(runner)
    await _within(STEP, "closing the subscriber's cluster client", subscriber.cluster.aclose())


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    redis = connect_redis_cluster(redis_cluster.url)
    yield redis
    await _within(STEP, "closing the cluster client", redis.aclose())


def test_cluster_is_up_with_a_replica_per_master(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.master_nodes()
    assert len(masters) == 3
    assert all(len(redis_cluster.replicas_of(m)) == 1 for m in masters)
    assert redis_cluster.healthy()
    assert redis_cluster.binary is not None and redis_cluster.binary.version >= (7, 0)
    print(f"\ncluster started in {redis_cluster.started_in:.2f}s with {redis_cluster.binary}")


async def test_sharded_publish_reaches_subscribers_on_every_shard(
        redis_cluster: RedisCluster, client: ClusterClient) -> None:
    # One channel per master, so every shard's link is exercised.
    channels: dict[str, bytes] = {}
    for n in itertools.count():
        name = f"cw:test:ch{n}".encode()
        channels.setdefault(redis_cluster.master_for_key(name).address, name)
        if len(channels) == 3:
            break
    got: dict[bytes, list[bytes]] = {ch: [] for ch in channels.values()}
    subscriber = ShardedSubscriber(connect_redis_cluster(redis_cluster.url))
    runner = asyncio.create_task(subscriber.run())
    try:
        for ch in channels.values():
            await subscriber.subscribe(ch, got[ch].append)
        assert {subscriber.owner(ch) for ch in channels.values()} == set(channels)  # one link per master
        for ch in channels.values():
            assert await client.spublish(ch, b"hello " + ch) == 1  # SPUBLISH counts the shard's subscribers
        await async_wait_until(lambda: all(got[ch] == [b"hello " + ch] for ch in channels.values()), 5,
                               "a message on every shard")
        await subscriber.unsubscribe(next(iter(channels.values())))
        assert await client.spublish(next(iter(channels.values())), b"gone") == 0
    finally:
        await _stop(subscriber, runner)


async def test_a_script_on_keys_sharing_a_hash_tag_runs_in_one_slot(
        redis_cluster: RedisCluster, client: ClusterClient) -> None:
    stream, inbox = b"cw:{u:bob}:inbox", b"cw:{u:bob}:delivered"
    assert key_slot(stream) == key_slot(inbox)
    script = client.register_script(
        "local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1]) "
        "redis.call('HSET', KEYS[2], 'last', id) return id")
    first = await script(keys=[stream, inbox], args=[b"hi"])
    assert await client.hget(inbox, "last") == first
    assert [entry[1] for entry in await client.xrange(stream)] == [{b"m": b"hi"}]
    two_slots = (b"cw:{u:bob}:x", b"cw:{u:carol}:x")
    with pytest.raises(RedisClusterException, match="same key slot"):  # the client refuses before sending …
        await client.eval("return 1", 2, *two_slots)
    node = redis_cluster.master_nodes()[0].client()
    try:
        with pytest.raises(REDIS_ERRORS, match="same slot"):  # … and so does Redis (CROSSSLOT)
            node.eval("return 1", 2, *two_slots)
    finally:
        node.close()
    await client.delete(stream)
    await client.delete(inbox)


async def _publish_until(stop: asyncio.Event, client: ClusterClient, channel: bytes,
                         sent: list[tuple[int, float]]) -> None:
    """SPUBLISH 1, 2, 3, … every 10 ms until ``stop``; failures (the shard failing over) are skipped.

    ``stop`` ends it even when a ``cancel()`` is swallowed inside ``spublish``
    (and ``REDIS_ERRORS`` is suppressed here, so a cancel turned into one would be too).
    """
    for n in itertools.count(1):
        if stop.is_set():
            return
        with contextlib.suppress(*REDIS_ERRORS):
            await client.spublish(channel, str(n).encode())
            sent.append((n, time.monotonic()))
        await asyncio.sleep(0.01)  # the publishing rate, not a synchronisation


@pytest.mark.timeout(180)  # the deadlines below, a failing step's plus the clean-up's, stay under this
async def test_sharded_subscriber_survives_a_master_failover(
        redis_cluster: RedisCluster, client: ClusterClient) -> None:
    channel = b"cw:test:failover"
    other = next(f"cw:test:other{n}".encode() for n in itertools.count()
                 if redis_cluster.master_for_key(f"cw:test:other{n}") != redis_cluster.master_for_key(channel))
    received: list[tuple[int, float]] = []
    others: list[bytes] = []
    events: list[tuple[str, set[bytes], float]] = []
    subscriber = ShardedSubscriber(connect_redis_cluster(redis_cluster.url))
    subscriber.on_lost = lambda chans: events.append(("lost", chans, time.monotonic()))
    subscriber.on_resubscribed = lambda chans: events.append(("back", chans, time.monotonic()))
    runner = asyncio.create_task(subscriber.run(), name="subscriber.run")
    sent: list[tuple[int, float]] = []
    stop = asyncio.Event()
    publisher = asyncio.create_task(_publish_until(stop, client, channel, sent), name="publisher")
    master = redis_cluster.master_for_key(channel)
    try:
        await _within(STEP, f"subscribing {channel!r}",
                      subscriber.subscribe(channel, lambda data: received.append((int(data), time.monotonic()))))
        await _within(STEP, f"subscribing {other!r}", subscriber.subscribe(other, others.append))
        await async_wait_until(lambda: len(received) >= 5, 5, "messages before the failover")

        killed_at = time.monotonic()
        # kill_master has its own deadlines (promotion, then cluster_state:ok); this one only backs them up.
        failover = await _within(2 * FAILOVER_DEADLINE + STEP, f"failing over {master.address}",
                                 asyncio.to_thread(redis_cluster.kill_master, master, FAILOVER_DEADLINE))
        assert failover.seconds < FAILOVER_DEADLINE
        before = len(received)
        await async_wait_until(lambda: len(received) > before + 5, FAILOVER_DEADLINE, "messages after the failover")
        await async_wait_until(lambda: subscriber.healthy, 5, "every channel subscribed again")

        dark = next(t for n, t in received if t > killed_at and n > received[before - 1][0]) - killed_at
        after_promotion = dark - failover.seconds
        print(f"\nfailover: replica {failover.promoted.address} promoted {failover.seconds:.2f}s after the kill; "
              f"subscriber dark {dark:.2f}s ({after_promotion:+.2f}s after the promotion)")
        assert [kind for kind, _, _ in events] == ["lost", "back"]
        assert events[0][1] == events[1][1] == {channel}  # the other shard's channel was never lost
        assert events[0][2] - killed_at < 1.0  # the loss is seen at once (the socket closes), not at a timeout
        assert dark < FAILOVER_DEADLINE
        assert subscriber.owner(channel) == failover.promoted.address
        assert subscriber.resubscribes == 1
        numbers = [n for n, _ in received]
        assert numbers == sorted(set(numbers))  # no duplicate, no reordering on the wire
        await _within(STEP, "SPUBLISH on the untouched shard", client.spublish(other, b"still here"))
        await async_wait_until(lambda: b"still here" in others, 5, "the untouched shard still delivering")
    finally:
        stop.set()
        await _stopped(publisher, runner)
        await _within(STEP, "closing the subscriber's cluster client", subscriber.cluster.aclose())
        await _within(30, f"restarting {master.address}", asyncio.to_thread(redis_cluster.restart, master, 20))
    assert redis_cluster.replicas_of(failover.promoted) == [master]  # the old master rejoined as a replica


def _move_slot(redis_cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode) -> None:
    """Hand an empty slot from ``source`` to ``target`` the way redis-cli --cluster reshard does."""
    target_id, source_id = target.ask("CLUSTER", "MYID"), source.ask("CLUSTER", "MYID")
    assert isinstance(target_id, bytes) and isinstance(source_id, bytes)
    assert target.ask("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id) == b"OK"
    assert source.ask("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == b"OK"
    for master in redis_cluster.master_nodes():
        assert master.ask("CLUSTER", "SETSLOT", str(slot), "NODE", target_id) == b"OK"


async def test_a_channel_whose_slot_moves_is_followed_to_its_new_master(
        redis_cluster: RedisCluster, client: ClusterClient) -> None:
    channel = b"cw:test:moving"
    slot = key_slot(channel)
    source = redis_cluster.master_for_key(channel)
    target = next(m for m in redis_cluster.master_nodes() if m is not source)
    got: list[bytes] = []
    events: list[tuple[str, set[bytes]]] = []
    subscriber = ShardedSubscriber(connect_redis_cluster(redis_cluster.url))
    subscriber.on_lost = lambda chans: events.append(("lost", chans))
    subscriber.on_resubscribed = lambda chans: events.append(("back", chans))
    runner = await _running(subscriber)
    try:
        await subscriber.subscribe(channel, got.append)
        moved_at = time.monotonic()
        _move_slot(redis_cluster, slot, source, target)  # the old owner sends SUNSUBSCRIBE
        await async_wait_until(lambda: subscriber.owner(channel) == target.address, 5, "the channel on its new master")
        print(f"\nslot move: subscriber on the new master after {time.monotonic() - moved_at:.3f}s")
        assert events == [("lost", {channel}), ("back", {channel})]
        assert await client.spublish(channel, b"after the move") == 1  # redis-py follows the MOVED
        await async_wait_until(lambda: got == [b"after the move"], 5, "delivery from the new master")
    finally:
        await _stop(subscriber, runner)
        _move_slot(redis_cluster, slot, target, source)  # the session's cluster as it was


async def test_a_link_that_stops_answering_is_dropped_and_replaced(
        redis_cluster: RedisCluster, client: ClusterClient) -> None:
    channel = b"cw:test:paused"
    master = redis_cluster.master_for_key(channel)
    got: list[bytes] = []
    lost: list[float] = []
    subscriber = ShardedSubscriber(connect_redis_cluster(redis_cluster.url), keepalive=0.2, ping_timeout=0.4)
    subscriber.on_lost = lambda chans: lost.append(time.monotonic())
    runner = await _running(subscriber)
    try:
        await subscriber.subscribe(channel, got.append)
        paused_at = time.monotonic()
        assert master.ask("CLIENT", "PAUSE", "1500", "ALL") == b"OK"  # alive, connected, silent
        await async_wait_until(lambda: lost, 3, "the silent link noticed")
        assert 0.4 < lost[0] - paused_at < 1.5  # by the unanswered PING, before the pause ends
        await async_wait_until(lambda: subscriber.healthy and subscriber.resubscribes == 1, 5, "subscribed again")
        assert await client.spublish(channel, b"awake") == 1
        await async_wait_until(lambda: got == [b"awake"], 5, "delivery after the pause")
    finally:
        master.ask("CLIENT", "UNPAUSE")
        await _stop(subscriber, runner)


async def test_a_failing_handler_or_callback_does_not_stop_delivery(
        redis_cluster: RedisCluster, client: ClusterClient) -> None:
    channel = b"cw:test:faulty"
    got: list[bytes] = []

    def handler(data: bytes) -> None:
        got.append(data)
        if data == b"boom":
            raise ValueError("a bug in one handler")

    subscriber = ShardedSubscriber(connect_redis_cluster(redis_cluster.url))
    subscriber.on_lost = subscriber.on_resubscribed = lambda chans: 1 / 0  # type: ignore[func-returns-value]
    runner = await _running(subscriber)
    try:
        await subscriber.subscribe(channel, handler)
        await client.spublish(channel, b"boom")
        await client.spublish(channel, b"after")
        await async_wait_until(lambda: got == [b"boom", b"after"], 5, "delivery past the failing handler")
        assert subscriber.healthy and not runner.done()
    finally:
        await _stop(subscriber, runner)


async def test_a_slot_map_naming_a_replica_does_not_keep_the_channel_there(redis_cluster: RedisCluster) -> None:
    """A stale map can name a replica (a killed master restarted after its replica's promotion): Redis
    lets the replica take the SSUBSCRIBE, but it hears its master's SPUBLISH only once the master counts it
    as its replica, so the failover chaos test lost DMs published in between.  The link must end on the master."""
    channel = b"cw:test:stale-map"
    master = redis_cluster.master_for_key(channel)
    replica = redis_cluster.replicas_of(master)[0]
    subscriber = ShardedSubscriber(connect_redis_cluster(redis_cluster.url))
    await _within(STEP, "reading the slot map", subscriber.cluster.initialize())
    manager = subscriber.cluster.nodes_manager
    owner = manager.slots_cache[key_slot(channel)][0]
    kwargs = {k: v for k, v in owner.connection_kwargs.items() if k not in ("host", "port")}
    stale = PyClusterNode(replica.host, replica.port, "primary", connection_class=owner.connection_class, **kwargs)
    manager.slots_cache[key_slot(channel)] = [stale]  # the map names the replica as the slot's master
    got: list[bytes] = []
    subscriber.set_handler(channel, got.append)
    runner = await _running(subscriber)
    try:
        await async_wait_until(lambda: subscriber.owner(channel) == master.address, 5, "the channel on the master")
        assert subscriber.healthy
        publisher = connect_redis_cluster(redis_cluster.url)
        try:
            assert await _within(STEP, "publishing", publisher.spublish(channel, b"on the master")) >= 1
        finally:
            await _within(STEP, "closing the publisher", publisher.aclose())
        await async_wait_until(lambda: got == [b"on the master"], 5, "delivery from the master")
    finally:
        await _stop(subscriber, runner)
