"""Every message-store script (gateway/store.py) on the real Redis Cluster of the session (issue 15).

A script whose keys span two hash slots is refused by a cluster (CROSSSLOT, or by redis-py before it
is sent), and a sharded publish to a channel of another slot fails: so each send kind, the history
reads, replay, settle and advance running here, with the publishes received over ``SSUBSCRIBE``,
shows the store's scripts are single-slot.  The users, group and ids are unique to each run, and
the keys are removed afterwards (the cluster is shared by the session).
"""

from __future__ import annotations

import json
import uuid

import msgspec
import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.exceptions import RedisClusterException, ResponseError

from common import keys
from common.redis import publish_command
from common.redis_cluster import RedisCluster
from gateway.store import Store
from protocol.names import id_tuple
from tests.backends import cluster_client, delete_tagged, sharded_subscriber  # noqa: F401 (client)
from tests.helpers import async_wait_until


def _ids(page: list[msgspec.Raw]) -> list[str]:
    return [json.loads(bytes(raw))["id"] for raw in page]


async def test_every_store_script_runs_on_a_cluster(client: ClusterClient, redis_cluster: RedisCluster) -> None:
    run = uuid.uuid4().hex[:8]
    alice, bob, gkey = f"alice{run}", f"bob{run}", f"devs{run}"
    assert len({client.keyslot(keys.account(u)) for u in (alice, bob)} | {client.keyslot(keys.group(gkey))}) > 1
    for key in (alice, bob):
        await client.hset(keys.account(key), mapping={"name": key, "pw": "x"})
    await client.hset(keys.session(bob), mapping={"gw": "gw1", "token": "t", "name": bob})
    await client.hset(keys.group(gkey), mapping={"name": gkey, "owner": alice})
    await client.hset(keys.group_members(gkey), mapping={alice: alice, bob: bob})
    broadcast_existed = await client.exists(keys.BROADCAST_STREAM)
    store = Store(client, maxlen=100, rate=100, burst=100)  # the rate step runs too
    assert store.publish == publish_command(client) == "SPUBLISH"
    channels = (keys.user_channel(bob), keys.user_channel(alice), keys.group_channel(gkey), keys.BROADCAST_CHANNEL)
    got: dict[bytes, list[bytes]] = {channel.encode(): [] for channel in channels}
    broadcast = None
    try:
        handlers = {channel: got[channel.encode()].append for channel in channels}
        async with sharded_subscriber(redis_cluster.url, handlers):

            # DM alice -> bob (bob online: published, delivered moves), a retry, and bob's reply.
            first = await store.send_dm(b'"alice"', alice, bob, "hi bob", ref="r1")
            again = await store.send_dm(b'"alice"', alice, bob, "hi bob", ref="r1")
            assert first is not None and again is not None and again.duplicate and again.id == first.id
            reply = await store.send_dm(b'"bob"', bob, alice, "hi alice", floor=first.id)
            assert reply is not None and id_tuple(reply.id) > id_tuple(first.id)
            assert await store.send_dm(b'"alice"', alice, f"nobody{run}", "x") is None
            assert await client.hget(keys.account(bob), "delivered") == first.id.encode()
            for me, peer in ((alice, bob), (bob, alice)):
                assert _ids(await store.dm_history(me, peer, None, 10)) == [first.id, reply.id]
            assert _ids(await store.dm_history(alice, bob, reply.id, 10)) == [first.id]
            inbox = await store.replay(keys.inbox_stream(bob), "0-0")
            assert [i for i, _ in inbox.frames] == [first.id] and inbox.recovered

            # Broadcast in {all}, group message in the group's slot.
            broadcast = await store.send_broadcast(b'"alice"', alice, "hello all", ref="b1")
            assert (await store.send_broadcast(b'"alice"', alice, "hello all", ref="b1")).duplicate
            sent = [await store.send_group(b'"bob"', bob, gkey, f"g{i}", ref=f"g{i}") for i in range(3)]
            assert _ids(await store.history(keys.group_stream(gkey), None, 2)) == [s.id for s in sent[1:]]
            group = await store.replay(keys.group_stream(gkey), "0-0")
            assert [i for i, _ in group.frames] == [s.id for s in sent] and group.recovered
            assert broadcast.id in [i for i, _ in (await store.replay(keys.BROADCAST_STREAM, "0-0")).frames]

            await store.settle(bob, "t", first.id)
            await store.advance_delivered(bob, first.id)

            def arrived() -> bool:
                return (len(got[keys.user_channel(bob).encode()]) == 1
                        and len(got[keys.user_channel(alice).encode()]) == 0
                        and len(got[keys.group_channel(gkey).encode()]) == 3
                        and any(json.loads(m)["id"] == broadcast.id for m in got[keys.BROADCAST_CHANNEL.encode()]))

            await async_wait_until(arrived, 5, "every publish over SSUBSCRIBE")  # alice has no session: nothing
            assert json.loads(got[keys.user_channel(bob).encode()][0])["id"] == first.id

            # The old layout is refused here: what this test would have caught.
            with pytest.raises((RedisClusterException, ResponseError)):
                await client.eval("return 1", 2, keys.inbox_stream(alice), keys.inbox_stream(bob))
    finally:
        await delete_tagged(client, f"u:{alice}", f"u:{bob}", f"u:nobody{run}", f"g:{gkey}")
        for ref in ("b1", ""):
            await client.delete(keys.broadcast_dedupe(alice, ref))
        if not broadcast_existed:
            await client.delete(keys.BROADCAST_STREAM, keys.stream_origin(keys.BROADCAST_STREAM), keys.BROADCAST_CLOCK)
        elif broadcast is not None:
            await client.xdel(keys.BROADCAST_STREAM, broadcast.id)
