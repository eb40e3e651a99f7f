"""Group chat across two real gateways: membership, delivery, offline catch-up, permissions, races."""

from __future__ import annotations

import asyncio

import pytest

from client import ChatClient
from client.chat import Event
from protocol import frames as f
from protocol.errors import ChatError, Forbidden, GroupExists, NotMember
from tests.backends import RedisBackend, redis_server_on_each_backend  # noqa: F401 (on every backend)
from tests.helpers import Clients, Processes, wait_for_event


def to_group(body: str):
    return lambda e: isinstance(e, f.Message) and e.to.startswith("#") and e.body == body


def group_event(what: str, user: str):
    return lambda e: isinstance(e, f.GroupEvent) and e.event == what and e.user == user




async def test_create_join_message_leave_across_gateways(two_gateways: tuple[str, str], clients: Clients) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    carol = await clients.login(url1, "carol")
    info = await alice.group("create", "#Devs")
    assert (info.group, info.owner, info.members, info.invite_only) == ("Devs", "alice", ["alice"], False)
    assert (await bob.group("join", "devs")).members == ["alice", "bob"]  # names are case-insensitive
    await carol.group("join", "DEVS")
    await wait_for_event(bob, group_event("joined", "carol"))  # across gateways

    ack = await alice.send("#devs", "hello group")
    for member in (bob, carol):
        got = await wait_for_event(member, to_group("hello group"))
        assert isinstance(got, f.Message) and got.to == "#Devs" and got.from_ == "alice" and got.id == ack.id
    assert [g.group for g in await bob.groups()] == ["Devs"]

    left = await bob.group("leave", "devs")
    assert left.members == []
    await wait_for_event(alice, group_event("left", "bob"))
    await alice.send("#devs", "after bob left")
    await bob.send("@bob", "marker")  # bob's next event proves nothing else came first
    nxt = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    assert isinstance(nxt, f.Message) and nxt.body == "marker"
    assert await bob.groups() == []
    with pytest.raises(NotMember):
        await bob.send("#devs", "let me back in")


async def test_offline_member_gets_group_messages_on_return(two_gateways: tuple[str, str], clients: Clients) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    await alice.group("create", "devs")
    await bob.group("join", "devs")
    await alice.send("#devs", "seen live")
    await wait_for_event(bob, to_group("seen live"))
    await bob.close()
    sent = [(await alice.send("#devs", f"while away {i}")).id for i in range(3)]

    back = await clients.login(url1, "bob")  # a fresh login: no resume positions at all
    got = [await wait_for_event(back, lambda e: isinstance(e, f.Message)) for _ in range(3)]
    assert [m.id for m in got] == sent  # type: ignore[union-attr]
    assert back.positions["#devs"] == sent[-1]
    history = await back.history("#devs")
    assert [m.body for m in history] == ["seen live", "while away 0", "while away 1", "while away 2"]


async def test_group_messages_survive_a_reconnect_with_resume(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    doomed = processes.gateway(redis_server.url)
    spare = processes.gateway(redis_server.url)
    alice = await clients.login(spare.url, "alice")
    bob = await clients.login([doomed.url, spare.url], "bob", reconnect=True)
    await alice.group("create", "ops")
    await bob.group("join", "ops")
    doomed.kill()
    sent = [(await alice.send("#ops", f"during {i}")).id for i in range(4)]
    got: list[Event] = []
    while len([e for e in got if isinstance(e, f.Message)]) < 4:
        got.append(await wait_for_event(bob, lambda e: isinstance(e, f.Message), 15))
    assert [m.id for m in got if isinstance(m, f.Message)] == sent


async def test_non_members_can_neither_send_nor_read(two_gateways: tuple[str, str], clients: Clients) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    dave = await clients.login(url2, "dave")
    await alice.group("create", "secret")
    await alice.send("#secret", "members only")
    with pytest.raises(NotMember):
        await dave.send("#secret", "hi?")
    with pytest.raises(NotMember):
        await dave.history("#secret")
    with pytest.raises(NotMember):
        await dave.group("members", "secret")
    with pytest.raises(ChatError) as missing:
        await dave.send("#nosuchgroup", "anyone?")
    assert missing.value.code.value == "not_found"


async def test_ten_users_racing_to_create_one_group_make_one_owner(
    two_gateways: tuple[str, str], clients: Clients
) -> None:
    users = [await clients.login(two_gateways[i % 2], f"racer{i}") for i in range(10)]

    async def create(c: ChatClient) -> f.GroupInfo | ChatError:
        try:
            return await c.group("create", "arena")
        except ChatError as exc:
            return exc

    results = await asyncio.gather(*(create(c) for c in users))
    owners = [r for r in results if isinstance(r, f.GroupInfo)]
    assert len(owners) == 1 and all(isinstance(r, GroupExists) for r in results if r not in owners)
    assert (await users[0].group("join", "arena")).owner == owners[0].owner or users[0].user == owners[0].owner


async def test_invite_only_groups_and_owner_powers(two_gateways: tuple[str, str], clients: Clients) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    eve = await clients.login(url2, "eve")
    await alice.group("create", "core", invite_only=True)
    with pytest.raises(Forbidden):
        await eve.group("join", "core")
    with pytest.raises(Forbidden):  # only the owner invites
        await eve.group("invite", "core", user="eve")
    await alice.group("invite", "core", user="bob")
    invited = await wait_for_event(bob, group_event("invited", "bob"))  # told on another gateway
    assert isinstance(invited, f.GroupEvent) and invited.by == "alice" and invited.group == "core"
    assert (await bob.group("join", "core")).members == ["alice", "bob"]

    await alice.send("#core", "before removal")
    await wait_for_event(bob, to_group("before removal"))
    await alice.group("remove", "core", user="bob")
    await wait_for_event(bob, group_event("removed", "bob"))
    await alice.send("#core", "after removal")
    with pytest.raises(NotMember):
        await bob.send("#core", "still here?")
    await alice.send("@bob", "marker")
    nxt = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    assert isinstance(nxt, f.Message) and nxt.body == "marker"  # "after removal" never reached bob

    info = await alice.group("set", "core", invite_only=False)
    assert not info.invite_only
    assert "eve" in (await eve.group("join", "core")).members
