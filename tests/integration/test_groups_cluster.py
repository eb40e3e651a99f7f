"""Every group operation on a real Redis Cluster (issue 15): each script runs in one slot.

A script touching keys of two slots fails there with CROSSSLOT, and a publish on a
channel of another slot is refused, so running each operation of
:class:`gateway.groups.Groups` (and the cursor flush) against the session's 3+3
cluster, with the group and its users spread over different masters, proves the
split of docs/cluster.md ("Groups and broadcasts").  The events are read back with
the sharded subscriber, as a gateway would hear them.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from common import keys
from common.redis import connect_redis_cluster
from common.redis_cluster import RedisCluster
from common.runtime import cancel_and_wait
from common.sharded_pubsub import ShardedSubscriber
from gateway import group_scripts
from gateway.group_cursors import flush_cursors
from gateway.groups import Groups
from protocol.errors import Forbidden, GroupExists, NotMember
from tests.helpers import async_wait_until

STEP = 10.0


@pytest.fixture
async def cluster(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    redis = connect_redis_cluster(redis_cluster.url)
    yield redis
    await asyncio.wait_for(redis.aclose(), STEP)


def _spread(redis_cluster: RedisCluster, tag: str, make: Any, taken: set[str]) -> str:
    """A fresh name whose key lives on a master none of ``taken`` lives on (while there is one)."""
    masters = {m.address for m in redis_cluster.master_nodes()}
    for n in itertools.count():
        name = f"{tag}{secrets.token_hex(3)}{n}"
        master = redis_cluster.master_for_key(make(name)).address
        if master not in taken or taken >= masters:
            taken.add(master)
            return name
    raise AssertionError("unreachable")


class _Member:
    """What the cursor flush reads of a session."""

    def __init__(self, key: str, gkey: str, last: tuple[int, int]) -> None:
        self.key, self.cursors_dirty, self.groups, self.last_group = key, True, {gkey: "Core"}, {gkey: last}


def _user_keys(ukey: str) -> list[str]:
    return [keys.user_groups(ukey), keys.group_cursors(ukey), keys.group_parted(ukey), keys.invitations(ukey)]


async def _cleanup(redis: ClusterClient, gkeys: list[str], ukeys: list[str]) -> None:
    for key in [k for g in gkeys for k in group_scripts.group_keys(g)] + [k for u in ukeys for k in _user_keys(u)]:
        await redis.delete(key)


async def test_every_group_operation_runs_on_a_cluster(redis_cluster: RedisCluster, cluster: ClusterClient) -> None:
    taken: set[str] = set()
    gkey = _spread(redis_cluster, "g", keys.group, taken)
    alice = _spread(redis_cluster, "a", keys.user_groups, taken)
    bob = _spread(redis_cluster, "b", keys.user_groups, taken)
    carol = _spread(redis_cluster, "c", keys.user_groups, set())
    groups = Groups(cluster)
    heard: dict[str, list[dict[str, Any]]] = {"group": [], "bob": []}
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    subscriber = ShardedSubscriber(connect_redis_cluster(redis_cluster.url))
    runner = asyncio.create_task(subscriber.run())
    try:
        await subscriber.subscribe(keys.group_channel(gkey).encode(), lambda b: heard["group"].append(decode(b)))
        await subscriber.subscribe(keys.user_channel(bob).encode(), lambda b: heard["bob"].append(decode(b)))

        # create (invite-only), with a marker on the group's channel
        state = await groups.create(gkey, "Core", alice, "alice", True, nonce="n1")
        assert (state.owner, state.members, state.position) == ("alice", ["alice"], "0-0")
        with pytest.raises(GroupExists):
            await groups.create(gkey, "Core", carol, "carol", False)
        with pytest.raises(Forbidden):  # invite-only
            await groups.join(gkey, bob, "bob")

        # invite: the group's event on its channel, the invitee's copy on their own channel
        await groups.owner_op("invite", gkey, alice, "alice", bob, "bob")
        assert len(await groups.invitations(bob)) == 1  # what login sends
        await async_wait_until(lambda: [e.get("event") for e in heard["bob"]] == ["invited"], 5, "the invitation")

        # a message stored meanwhile moves the group's clock (as send_group does): a new member starts after it
        await cluster.set(keys.group_clock(gkey), "5000-3")
        state, new = await groups.join(gkey, bob, "bob", nonce="n2")
        assert new and state.position == "5000-3" and state.members == ["alice", "bob"]
        assert await groups.invitations(bob) == []  # taken up by the join
        assert (await groups.state(gkey, bob)).invite_only

        # members, list, membership, positions
        assert [g.name for g in await groups.of_user(bob)] == ["Core"]
        assert await groups.membership(bob, [gkey]) == ("5000-3", {gkey: "5000-3"})
        views = await groups.views(carol, [gkey])
        assert views[gkey].since is None and views[gkey].name == "Core"
        assert await groups.is_member(gkey, bob)

        # saved positions: directly, and through the gateway's flush (a pipeline over several users' slots)
        await groups.save_cursors(bob, {gkey: "5000-4"})
        await groups.save_cursors(bob, {gkey: "5000-1"})  # never back
        assert await groups.cursors(bob) == {gkey: "5000-4"}
        sessions = [_Member(u, gkey, (5000, 9)) for u in (alice, bob)]
        assert await flush_cursors(groups, {gkey: set(sessions)}) == 2  # type: ignore[arg-type]
        assert await groups.cursors(alice) == {gkey: "5000-9"}

        await groups.owner_op("set", gkey, alice, "alice", invite_only=False)
        await groups.join(gkey, carol, "carol")

        # remove: the event, then the hidden part notice with the span, both on the group's channel
        await cluster.set(keys.group_clock(gkey), "6000-0")
        await groups.owner_op("remove", gkey, alice, "alice", carol, "carol")
        assert await groups.parted(carol, [gkey]) == {gkey: ("5000-3", "6000-0")}
        with pytest.raises(NotMember):
            await groups.state(gkey, carol)
        # removing an invitee drops the invitation on both sides
        await groups.owner_op("invite", gkey, alice, "alice", carol, "carol")
        await groups.owner_op("remove", gkey, alice, "alice", carol, "carol")
        assert await groups.invitations(carol) == []

        # leave: the owner's leave hands the group to the longest-standing member
        left = await groups.leave(gkey, alice, "alice")
        assert not left.deleted and (await groups.state(gkey, bob)).owner == "bob"
        assert await groups.parted(alice, [gkey]) == {gkey: ("0-0", "6000-0")}
        assert await groups.cursors(alice) == {}  # dropped with the membership

        # login's repair of the user's set: alice's entry goes, bob's stays
        assert await groups.keys_of_user(alice) == [gkey]
        view = (await groups.views(alice, [gkey]))[gkey]
        await groups.repair(alice, gkey, view)
        assert await groups.keys_of_user(alice) == []

        # the last member's leave deletes the group and its invitations
        await groups.owner_op("invite", gkey, bob, "bob", carol, "carol")
        left = await groups.leave(gkey, bob, "bob")
        assert left.deleted and await cluster.exists(keys.group(gkey)) == 0
        assert await cluster.hgetall(keys.invitations(carol)) == {}

        await async_wait_until(
            lambda: [e.get("event") or e["type"] for e in heard["group"]] == [
                "_mark", "invited", "_mark", "joined", "updated", "joined", "removed", "part", "invited", "left",
                "owner", "invited", "left",
            ], 5, "every event on the group's channel")
        part = heard["group"][7]
        assert (part["user"], part["since"], part["upto"]) == (carol, "5000-3", "6000-0")
    finally:
        await cancel_and_wait([runner])
        await asyncio.wait_for(subscriber.cluster.aclose(), STEP)
        await _cleanup(cluster, [gkey], [alice, bob, carol])
