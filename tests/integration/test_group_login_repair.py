"""Login repairs a group operation a crash cut between its single-slot steps (issue 15).

Each membership change is split into steps in the group's slot and the user's
slot (gateway/groups.py).  These tests run only some of the steps against a
real Redis, as a gateway that died between them would have left it, then log
the user in through a real gateway and check that the group's slot decided.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from client import ChatClient
from client.chat import Event
from common import keys
from gateway.groups import Groups
from protocol import frames as f
from protocol.names import name_key
from tests.helpers import Clients, Processes, RedisServer, wait_for_event


async def until_marker(client: ChatClient) -> list[Event]:
    """Every event up to a DM the client sends itself now (the gateway writes in order)."""
    await client.send("@" + client.user, "marker")
    seen: list[Event] = []
    while True:
        event = await client.next_event(5)
        if isinstance(event, f.Message) and event.body == "marker":
            return seen
        seen.append(event)


async def alice_and_bob(redis_server: RedisServer, processes: Processes,
                        clients: Clients) -> tuple[str, ChatClient, ChatClient]:
    """A gateway's URL, and alice and bob logged in there."""
    url = processes.gateway(redis_server.url).url
    return url, await clients.login(url, "alice"), await clients.login(url, "bob")


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_a_join_cut_off_after_the_groups_step_is_completed_at_login(
    redis_server: RedisServer, processes: Processes, clients: Clients, redis: Redis
) -> None:
    url, alice, bob = await alice_and_bob(redis_server, processes, clients)
    await alice.group("create", "core", invite_only=True)
    await alice.group("invite", "core", user="bob")
    await wait_for_event(bob, lambda e: isinstance(e, f.GroupEvent) and e.event == "invited")
    await bob.close()
    gkey, ukey = name_key("core"), name_key("bob")

    # bob's join, on a gateway that died after the group's step: the user's side was never finished
    groups = Groups(redis)
    await redis.sadd(keys.user_groups(ukey), gkey)  # step 0
    result = await groups._in_group(groups._join, gkey, ukey, "bob", "")  # step 1 only
    assert int(result[0]) == 1
    assert await redis.hexists(keys.invitations(ukey), gkey)  # step 2 (dropping it) never ran

    back = await clients.login(url, "bob")
    assert "#core" in back.positions  # a member from this login on
    ack = await alice.send("#core", "after the crash")
    got = await wait_for_event(back, lambda e: isinstance(e, f.Message) and e.to == "#core")
    assert isinstance(got, f.Message) and got.id == ack.id
    assert [g.group for g in await back.groups()] == ["core"]
    assert not await redis.hexists(keys.invitations(ukey), gkey)  # the stale invitation was dropped at login
    assert not any(isinstance(e, f.GroupEvent) and e.event == "invited" for e in await until_marker(back))


async def test_a_join_cut_off_before_the_groups_step_leaves_no_membership(
    redis_server: RedisServer, processes: Processes, clients: Clients, redis: Redis
) -> None:
    url, alice, bob = await alice_and_bob(redis_server, processes, clients)
    await alice.group("create", "core", invite_only=True)
    await bob.close()
    gkey, ukey = name_key("core"), name_key("bob")
    await redis.sadd(keys.user_groups(ukey), gkey)  # step 0 of a join whose group step never ran

    back = await clients.login(url, "bob")
    assert "#core" not in back.positions and await back.groups() == []
    assert not await redis.sismember(keys.user_groups(ukey), gkey)  # trimmed: the group's slot decides
    await alice.send("#core", "members only")
    assert not any(isinstance(e, f.Message) and e.to == "#core" for e in await until_marker(back))


async def test_a_removal_cut_off_after_the_groups_step_is_completed_at_login(
    redis_server: RedisServer, processes: Processes, clients: Clients, redis: Redis
) -> None:
    url, alice, bob = await alice_and_bob(redis_server, processes, clients)
    await alice.group("create", "core")
    await bob.group("join", "core")
    owed = await alice.send("#core", "stored while bob was a member")
    await bob.close()
    gkey, ukey, akey = name_key("core"), name_key("bob"), name_key("alice")
    await redis.hset(keys.group_cursors(ukey), gkey, "1-0")

    groups = Groups(redis)  # the owner's removal of bob, on a gateway that died after the group's step
    result = await groups._in_group(groups._owner_op, gkey, "remove", akey, "alice", ukey, "bob", "0", 60)
    assert int(result[0]) == 3 and not await redis.exists(keys.group_parted(ukey))
    since, upto = result[1].decode(), result[2].decode()
    assert await groups.parted(ukey, [gkey]) == {gkey: (since, upto)}  # the group's record stands in meanwhile

    back = ChatClient(url, reconnect=False)  # resuming from before the message bob is owed
    clients.clients.append(back)
    back.positions = {"#core": "1-0"}
    await back.connect()
    welcome = await back.login("bob", "pw")
    assert "#core" not in welcome.positions
    got = [e for e in await until_marker(back) if isinstance(e, f.Message) and e.to == "#core"]
    assert [m.id for m in got] == [owed.id]  # what the membership stored is still owed
    assert await redis.hget(keys.group_parted(ukey), gkey) is not None  # the user's side, repaired
    assert not await redis.sismember(keys.user_groups(ukey), gkey)
    assert not await redis.hexists(keys.group_cursors(ukey), gkey)
