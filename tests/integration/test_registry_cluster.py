"""The registry's steps on a real Redis Cluster (no CROSSSLOT anywhere) and on one Redis, and the
repairs of a crash between two steps (presence/registry.py's docstring argues them; these show them).

A script whose keys span two slots fails on the cluster with CROSSSLOT, and an ``SPUBLISH`` from a
script to a channel of another slot fails too: every test here drives claim, release, lease, reap and
reclaim end to end on the session's 3-master cluster.  Names and gateway ids are unique per test, and
every key a test made is deleted at its end (the cluster is shared by the session).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from common import keys
from common.redis import connect_redis_cluster
from common.redis_cluster import RedisCluster
from common.runtime import cancel_and_wait
from common.sharded_pubsub import ShardedSubscriber
from presence.registry import NoLease, Registry, token_hash
from protocol import control
from tests.backends import connect_where
from tests.helpers import async_wait_until


@pytest.fixture(params=["cluster", "single"])
def where(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Env:
    """A registry on one kind of Redis, with a unique namespace for names and gateways, and a listener."""

    def __init__(self, redis: Any, where: str) -> None:
        self.redis = redis
        self.where = where
        self.registry = Registry(redis, lease_ttl=10.0)
        tag = uuid.uuid4().hex[:8]
        self.names = {n: f"{n}{tag}" for n in ("alice", "bob", "carol", "dave")}
        self.gws = [f"gw{tag}{i}" for i in range(3)]
        self.heard: list[tuple[bytes, bytes]] = []
        self._subscriber: ShardedSubscriber | None = None
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    def key(self, who: str) -> str:
        return self.names[who]

    async def listen(self, channels: list[str]) -> None:
        """Collect what is published on ``channels`` (sharded on the cluster)."""
        if self.where == "cluster":
            self._subscriber = ShardedSubscriber(connect_redis_cluster(self._url))
            self._tasks.append(asyncio.create_task(self._subscriber.run()))
            for ch in channels:
                raw = ch.encode()
                await self._subscriber.subscribe(raw, lambda data, raw=raw: self.heard.append((raw, data)))
        else:
            self._pubsub = self.redis.pubsub()
            await self._pubsub.subscribe(*channels)
            self._tasks.append(asyncio.create_task(self._pump()))

    async def _pump(self) -> None:
        while True:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                self.heard.append((msg["channel"], msg["data"]))

    async def wait_heard(self, count: int) -> None:
        await async_wait_until(lambda: len(self.heard) >= count, 5, f"{count} published messages")

    def presence(self) -> list[tuple[str, str]]:
        return [(e["user"], e["status"]) for ch, data in self.heard if ch.startswith(b"cw:{pres:")
                for e in [msgspec.json.decode(data)]]

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._subscriber is not None:
            await self._subscriber.cluster.aclose()
        if self._pubsub is not None:
            await self._pubsub.aclose()
        for gw in self.gws:
            await self.registry.release_gateway(gw)
        for key in self.names.values():
            await self.redis.delete(keys.session(key))
            await self.redis.delete(keys.account(key))
            await self.redis.hdel(keys.ONLINE_OWNERS, key)
        for gw in self.gws:
            await self.redis.delete(keys.gateway_users(gw))
            await self.redis.hdel(keys.GATEWAY_EPOCHS, gw)
            await self.redis.hdel(keys.REAPING, gw)
            await self.redis.zrem(keys.GATEWAYS, gw)
        await self.redis.zrem(keys.ONLINE, *self.names.values())

    _url = ""


@pytest.fixture
async def env(where: str, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    redis, url = connect_where(where, request)
    e = Env(redis, where)
    e._url = url
    try:
        yield e
    finally:
        await e.close()
        await redis.aclose()


async def _mine(env: Env) -> list[str]:
    return [n for n in await env.registry.online() if n in env.names.values()]


async def test_claim_release_takeover_reap_and_reclaim_run_single_slot(env: Env) -> None:
    reg = env.registry
    alice, bob, carol = env.key("alice"), env.key("bob"), env.key("carol")
    gw0, gw1, _ = env.gws
    await env.listen([keys.presence_channel(alice), keys.presence_channel(bob), keys.presence_channel(carol),
                      keys.gateway_channel(gw0)])
    with pytest.raises(NoLease):
        await reg.claim(alice, alice, gw0, "t1")
    assert await reg.register_gateway(gw0) == await reg.register_gateway(gw0)  # a live lease keeps its epoch
    await reg.register_gateway(gw1)
    assert await reg.renew_lease(gw0) is True

    await env.redis.hset(keys.account(alice), mapping={"name": alice, "pw": "x", "delivered": "1700000000000-2"})
    claim = await reg.claim(alice, alice, gw0, "t1")
    assert claim is not None and claim.delivered == "1700000000000-2" and alice in claim.online.names
    assert await reg.claim(alice, alice, gw1, "t2") is None  # unique across gateways
    assert await reg.claim(bob, bob, gw0, "t3") is not None
    assert await reg.claim(carol, carol, gw1, "t4") is not None
    assert await _mine(env) == sorted([alice, bob, carol])
    page = await reg.online_page(None, 1000)  # the index is one slot: a page and the count in one MULTI
    assert set(env.names.values()) & set(page.names) == {alice, bob, carol}

    took = await reg.claim(alice, alice, gw1, "t5", takeover_token="t1")  # takeover: the old gateway is told
    assert took is not None and took.took_over and await reg.holder(alice) == gw1
    await env.wait_heard(4)  # three online events and the kick
    kicks = [control.decode(d) for ch, d in env.heard if ch == keys.gateway_channel(gw0).encode()]
    assert kicks == [control.Kick(user=alice, token=token_hash("t1"))]
    assert await reg.release(alice, gw0, "t1") is False  # the old session's late logout frees nothing

    assert await reg.release(bob, gw0, "t3") is True
    await env.redis.zadd(keys.GATEWAYS, {gw1: 1})  # gw1 stopped renewing long ago
    ids, freed = await reg.reap_expired()
    assert gw1 in ids and sorted(n for n in freed if n in env.names.values()) == sorted([alice, carol])
    assert await _mine(env) == []
    await env.wait_heard(7)
    assert sorted(env.presence()) == sorted([(alice, "online"), (bob, "online"), (carol, "online"),
                                             (bob, "offline"), (alice, "offline"), (carol, "offline")])

    # gw1 comes back (it was paused): registers a new lease and takes back its sockets' names.
    assert await reg.renew_lease(gw1) is False
    await reg.register_gateway(gw1)
    assert await reg.claim(carol, carol, gw0, "t6") is not None  # carol logged in elsewhere meanwhile
    statuses = await reg.reclaim(gw1, [(alice, alice, token_hash("t5")), (carol, carol, token_hash("t4"))])
    assert statuses == [1, 0]
    assert await _mine(env) == sorted([alice, carol])
    assert await reg.release_gateway(gw1) == [alice]
    assert await reg.release_gateway(gw0) == [carol]
    assert await _mine(env) == []


async def test_a_claim_that_stopped_after_the_session_step_is_reaped(env: Env) -> None:
    """Crash between claim steps 2 and 4: the session names the gateway, ONLINE does not list the name.
    The gateway's set lists it (step 1 came first), so the reaper frees it when the lease expires."""
    reg = env.registry
    alice = env.key("alice")
    gw0, gw1, _ = env.gws
    epoch = await reg.register_gateway(gw0)
    await reg.register_gateway(gw1)
    await env.redis.sadd(keys.gateway_users(gw0), f"{alice} {token_hash('t1')} {epoch}")  # step 1
    await reg._take(keys=[keys.session(alice), keys.account(alice)],  # step 2, then the gateway died
                    args=[gw0, epoch, token_hash("t1"), alice, "", "claim"])
    assert await reg.claim(alice, alice, gw1, "t2") is None  # its lease is live: the name is taken, as today
    await env.redis.zadd(keys.GATEWAYS, {gw0: 1})
    ids, freed = await reg.reap_expired()
    assert gw0 in ids and alice in freed
    assert await env.redis.exists(keys.session(alice), keys.gateway_users(gw0)) == 0
    assert await reg.claim(alice, alice, gw1, "t2") is not None
    assert await _mine(env) == [alice]


async def test_the_next_claim_frees_a_session_left_under_a_dead_lease(env: Env) -> None:
    """A gateway reaped while paused wrote a session after the reaper had read its set, then died:
    the session names a lease epoch that is gone, and no set lists it.  The user's next claim frees it."""
    reg = env.registry
    alice = env.key("alice")
    gw0, gw1, _ = env.gws
    epoch = await reg.register_gateway(gw0)
    await reg.register_gateway(gw1)
    await env.redis.zadd(keys.GATEWAYS, {gw0: 1})
    await reg.reap_expired()  # the lease is gone
    await reg._take(keys=[keys.session(alice), keys.account(alice)],  # the late step 2
                    args=[gw0, epoch, token_hash("t1"), alice, "", "claim"])
    claim = await reg.claim(alice, alice, gw1, "t2")
    assert claim is not None and not claim.took_over
    assert await reg.holder(alice) == gw1 and await _mine(env) == [alice]


async def test_a_release_that_stopped_after_freeing_the_session_is_finished(env: Env) -> None:
    """Crash (or a Redis error) between release steps 1 and 2: the session is gone, ONLINE still lists
    the name.  Retrying the release (the lease loop) finishes it; so would the gateway's reaper."""
    reg = env.registry
    alice, bob = env.key("alice"), env.key("bob")
    gw0, _, _ = env.gws
    await env.listen([keys.presence_channel(alice), keys.presence_channel(bob)])
    await reg.register_gateway(gw0)
    await reg.claim(alice, alice, gw0, "t1")
    await reg.claim(bob, bob, gw0, "t2")
    for key, token in ((alice, "t1"), (bob, "t2")):
        await reg._free(keys=[keys.session(key)], args=[gw0, token_hash(token), ""])  # step 1 only
    assert await _mine(env) == sorted([alice, bob])
    assert await reg.release(alice, gw0, "t1") is True  # the retry: steps 2-4
    assert await reg.release(alice, gw0, "t1") is False  # and again: nothing left
    assert await reg.release_gateway(gw0) == []  # bob: no session to free, but his name comes off ONLINE
    assert await _mine(env) == []
    assert await env.redis.exists(keys.gateway_users(gw0)) == 0
    await env.wait_heard(4)
    assert sorted(env.presence()) == sorted([(alice, "online"), (bob, "online"), (alice, "offline"),
                                             (bob, "offline")])  # each offline once


async def test_a_reap_that_stopped_after_taking_the_lease_is_finished_by_the_next_sweep(env: Env) -> None:
    """Crash of the reaper between reap steps 1 and 3: the lease is gone, the names still held.  The
    gateway stays listed as being reaped, and the next sweep (any presence service) frees them."""
    reg = env.registry
    alice = env.key("alice")
    gw0, gw1, _ = env.gws
    await reg.register_gateway(gw0)
    await reg.register_gateway(gw1)
    await reg.claim(alice, alice, gw0, "t1")
    await env.redis.zadd(keys.GATEWAYS, {gw0: 1})
    await reg._reap_start(keys=[keys.GATEWAYS, keys.GATEWAY_EPOCHS, keys.REAPING], args=[16, ""])  # step 1 only
    assert await reg.holder(alice) == gw0 and gw0 not in await reg.gateways()
    assert await reg.renew_lease(gw0) is False  # the gateway, if alive, finds out and re-claims
    ids, freed = await reg.reap_expired()
    assert gw0 in ids and alice in freed
    assert await reg.holder(alice) is None and await _mine(env) == []
    assert await env.redis.hexists(keys.REAPING, gw0) == 0
    assert gw0 not in (await reg.reap_expired())[0]


async def test_a_slow_reaper_leaves_names_re_claimed_under_the_new_lease(env: Env) -> None:
    """The gateway came back (new lease epoch) and re-claimed while a reaper of its old lease was still
    walking its set: the re-claimed sessions, their names and their members are left alone."""
    reg = env.registry
    alice = env.key("alice")
    gw0, _, _ = env.gws
    await reg.register_gateway(gw0)
    await reg.claim(alice, alice, gw0, "t1")
    await env.redis.zadd(keys.GATEWAYS, {gw0: 1})
    await reg._reap_start(keys=[keys.GATEWAYS, keys.GATEWAY_EPOCHS, keys.REAPING], args=[16, ""])
    await reg.register_gateway(gw0)
    assert await reg.reclaim(gw0, [(alice, alice, token_hash("t1"))]) == [2]  # still ours: moved to the new epoch
    ids, freed = await reg.reap_expired()  # the old lease's reap, finished now
    assert gw0 in ids and alice not in freed
    assert await reg.holder(alice) == gw0 and await _mine(env) == [alice]
    assert await reg.release_gateway(gw0) == [alice]


def test_the_presence_partitions_spread_over_the_clusters_masters(redis_cluster: RedisCluster) -> None:
    """On the real 3-master cluster (CLUSTER SLOTS asked, not assumed): about a third of the channels each."""
    owners = collections.Counter(redis_cluster.master_for_key(ch).address for ch in keys.PRESENCE_CHANNELS)
    assert len(owners) == 3 and sorted(owners.values()) == [5, 5, 6], owners


async def test_a_claim_whose_lease_is_reaped_midway_answers_no_lease_and_can_be_finished_or_undone(
    env: Env,
) -> None:
    """The lease went between claim steps 2 and 4 (this registry still had its epoch): step 4 answers
    NoLease with the session written.  The gateway claims again with the same token after registering
    (gateway/login.py) and gets it; or releases it, and nothing is left."""
    reg = env.registry
    alice, bob = env.key("alice"), env.key("bob")
    gw0, _, _ = env.gws
    await reg.register_gateway(gw0)
    reaper = Registry(env.redis)
    await env.redis.zadd(keys.GATEWAYS, {gw0: 1})
    await reaper.reap_expired()
    with pytest.raises(NoLease):
        await reg.claim(alice, alice, gw0, "ta")
    assert await reg.holder(alice) == gw0 and await _mine(env) == []  # written under the dead lease
    with pytest.raises(NoLease):  # the registry knows now: nothing written
        await reg.claim(bob, bob, gw0, "tb")
    assert await reg.holder(bob) is None
    assert await reg.release(alice, gw0, "ta") is True  # undone
    assert await reg.holder(alice) is None and await env.redis.exists(keys.gateway_users(gw0)) == 0

    await reg.register_gateway(gw0)
    await env.redis.zadd(keys.GATEWAYS, {gw0: 1})
    await reaper.reap_expired()
    with pytest.raises(NoLease):
        await reg.claim(bob, bob, gw0, "tb")
    await reg.register_gateway(gw0)
    claim = await reg.claim(bob, bob, gw0, "tb")  # finished: the same token takes its session back
    assert claim is not None and not claim.took_over
    assert await _mine(env) == [bob] and await reg.holder(alice) is None
    assert await reg.release_gateway(gw0) == [bob]
    assert await env.redis.exists(keys.gateway_users(gw0)) == 0
