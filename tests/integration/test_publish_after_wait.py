"""``--durability replica`` on the real Redis Cluster of the session: store, ``WAIT``, then publish (issue 15).

Two "gateways" (two stores, each with its own cluster pipeline and ``replicas=1``) send to one
stream, and their publish steps (store_lua.PUBLISH_UPTO) are let through in the opposite order to
their ids: the recipient still gets every message once, in id order, because the step publishes
everything after the stream's "published up to" cursor.  A send whose gateway never ran the step is
published by the sender's retry (a dedupe hit).  The keys are removed afterwards (the cluster is
shared by the session).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from redis.asyncio.cluster import RedisCluster as ClusterClient

from common import keys
from common.redis_cluster import RedisCluster
from gateway.cluster_pipeline import ClusterAutoPipeline
from gateway.store import Store, Stored
from tests.backends import cluster_client, delete_tagged, sharded_subscriber  # noqa: F401 (client)
from tests.helpers import async_wait_until

STEP = 10.0


class GatedStore(Store):
    """A store whose publish step waits for ``gate`` (the pause of a gateway between the two steps)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()

    async def _published(self, result: list[Any], stream: str, channel: str, *dm: str) -> Stored:
        await self.gate.wait()
        return await super()._published(result, stream, channel, *dm)


def _ids(frames: list[bytes]) -> list[str]:
    return [json.loads(frame)["id"] for frame in frames]


async def test_publish_steps_out_of_order_deliver_each_message_once_in_id_order(
        client: ClusterClient, redis_cluster: RedisCluster) -> None:
    run = uuid.uuid4().hex[:8]
    alice, carol, bob, gkey = f"alice{run}", f"carol{run}", f"bob{run}", f"devs{run}"
    for key in (alice, carol, bob):
        await client.hset(keys.account(key), mapping={"name": key, "pw": "x"})
    await client.hset(keys.session(bob), mapping={"gw": "gw1", "token": "t", "name": bob})
    await client.hset(keys.group(gkey), mapping={"name": gkey, "owner": alice})
    await client.hset(keys.group_members(gkey), mapping={alice: alice, carol: carol, bob: bob})
    pipes = [ClusterAutoPipeline(client, timeout=3.0, wait_timeout=2.0) for _ in range(2)]
    one, two = (GatedStore(client, pipeline=pipe, replicas=1) for pipe in pipes)
    assert one.deferred and two.deferred
    got: dict[str, list[bytes]] = {keys.user_channel(bob): [], keys.group_channel(gkey): []}
    try:
        async with sharded_subscriber(redis_cluster.url, {channel: frames.append for channel, frames in got.items()}):
            sends = {
                keys.user_channel(bob): (
                    lambda store, sender, body: store.send_dm(f'"{sender}"'.encode(), sender, bob, body, ref=body),
                    keys.inbox_stream(bob)),
                keys.group_channel(gkey): (
                    lambda store, sender, body: store.send_group(f'"{sender}"'.encode(), sender, gkey, body, ref=body),
                    keys.group_stream(gkey)),
            }
            for channel, (send, stream) in sends.items():
                one.gate.clear()
                two.gate.clear()
                first = asyncio.create_task(send(one, alice, f"first {channel}"))
                await async_wait_until(lambda s=stream: _length(client, s, 1), STEP, "the first stored")
                second = asyncio.create_task(send(two, carol, f"second {channel}"))
                await async_wait_until(lambda s=stream: _length(client, s, 2), STEP, "the second stored")
                assert got[channel] == []  # stored and replicated, not published: neither step has run
                two.gate.set()  # the later id's step first: it publishes both, in id order
                later = await asyncio.wait_for(second, STEP)
                one.gate.set()
                earlier = await asyncio.wait_for(first, STEP)
                assert earlier is not None and later is not None
                await async_wait_until(lambda c=channel: _count(got[c], 2), STEP, "both published")
                assert _ids(got[channel]) == [earlier.id, later.id]  # once each, in id order
                assert await client.get(keys.published(stream)) == later.id.encode()
            assert await client.hget(keys.account(bob), "delivered") == _ids(got[keys.user_channel(bob)])[-1].encode()

            # A DM to a session on hold is published, but does not move `delivered` (store_lua.SETTLE lifts it).
            await client.hset(keys.session(bob), "hold", "1")
            one.gate.set()
            held = await one.send_dm(b'"alice"', alice, bob, "while held")
            assert held is not None
            await async_wait_until(lambda: _count(got[keys.user_channel(bob)], 3), STEP, "the held DM published")
            assert await client.hget(keys.account(bob), "delivered") != held.id.encode()
    finally:
        for pipe in pipes:
            await pipe.aclose()
        await delete_tagged(client, f"u:{alice}", f"u:{carol}", f"u:{bob}", f"g:{gkey}")


async def test_a_retry_publishes_what_a_gateway_that_died_between_the_steps_stored(
        client: ClusterClient, redis_cluster: RedisCluster) -> None:
    run = uuid.uuid4().hex[:8]
    alice, bob = f"alice{run}", f"bob{run}"
    for key in (alice, bob):
        await client.hset(keys.account(key), mapping={"name": key, "pw": "x"})
    await client.hset(keys.session(bob), mapping={"gw": "gw1", "token": "t", "name": bob})
    pipes = [ClusterAutoPipeline(client, timeout=3.0, wait_timeout=2.0) for _ in range(2)]
    dead, alive = GatedStore(client, pipeline=pipes[0], replicas=1), Store(client, pipeline=pipes[1], replicas=1)
    got: list[bytes] = []
    try:
        async with sharded_subscriber(redis_cluster.url, {keys.user_channel(bob): got.append}):
            lost = asyncio.create_task(dead.send_dm(b'"alice"', alice, bob, "hello", ref="r1"))
            await async_wait_until(lambda: _length(client, keys.inbox_stream(bob), 1), STEP, "stored")
            lost.cancel()  # the gateway is gone before its publish step
            await asyncio.gather(lost, return_exceptions=True)
            retry = await alive.send_dm(b'"alice"', alice, bob, "hello", ref="r1")
            assert retry is not None and retry.duplicate
            await async_wait_until(lambda: _count(got, 1), STEP, "the retry's publish")
            assert _ids(got) == [retry.id]
            again = await alive.send_dm(b'"alice"', alice, bob, "hello", ref="r1")  # published already: nothing
            assert again is not None and again.id == retry.id
            marker = await alive.send_dm(b'"alice"', alice, bob, "marker")
            assert marker is not None
            await async_wait_until(lambda: _count(got, 2), STEP, "the marker")
            assert _ids(got) == [retry.id, marker.id]
    finally:
        for pipe in pipes:
            await pipe.aclose()
        await delete_tagged(client, f"u:{alice}", f"u:{bob}")


async def test_a_group_made_again_is_published_from_its_first_message(
        client: ClusterClient, redis_cluster: RedisCluster) -> None:
    """A deleted group's cursor outlives its stream; the new stream's first send starts it again at 0-0."""
    run = uuid.uuid4().hex[:8]
    alice, gkey = f"alice{run}", f"devs{run}"
    await client.hset(keys.group(gkey), mapping={"name": gkey, "owner": alice})
    await client.hset(keys.group_members(gkey), mapping={alice: alice})
    await client.set(keys.published(keys.group_stream(gkey)), "99999999999999-0")  # left from before
    pipe = ClusterAutoPipeline(client, timeout=3.0, wait_timeout=2.0)
    store = Store(client, pipeline=pipe, replicas=1)
    got: list[bytes] = []
    try:
        async with sharded_subscriber(redis_cluster.url, {keys.group_channel(gkey): got.append}):
            sent = [await store.send_group(b'"alice"', alice, gkey, body) for body in ("one", "two")]
            await async_wait_until(lambda: _count(got, 2), STEP, "both published")
            assert _ids(got) == [m.id for m in sent]
    finally:
        await pipe.aclose()
        await delete_tagged(client, f"g:{gkey}")


async def _length(client: ClusterClient, stream: str, n: int) -> bool:
    return int(await client.xlen(stream)) >= n


async def _count(frames: list[bytes], n: int) -> bool:
    return len(frames) >= n
