"""Catching up after the gateway lost its pub/sub link: groups (regressions found by the nemesis test)."""

from __future__ import annotations

import signal

import redis as redis_sync

from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer, wait_for_event


async def test_group_created_on_a_fresh_cluster_is_caught_up_after_a_pubsub_loss(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """tests/chaos/test_nemesis.py seed 4: a group created before any message existed starts at
    position "0-0", which the catch-up took for "nobody here has read it": everything the group
    stored while the gateway's subscriptions were down was skipped, for every local member."""
    gw1 = processes.gateway(redis_server.url)
    gw2 = processes.gateway(redis_server.url)
    owner = await clients.login(gw1.url, "owner")
    member = await clients.login(gw1.url, "member")
    sender = await clients.login(gw2.url, "sender")
    info = await owner.group("create", "devs")
    assert info.position == "0-0"  # nothing stored anywhere yet
    assert (await member.group("join", "devs")).position == "0-0"
    await sender.group("join", "devs")
    assert gw1.proc is not None
    admin = redis_sync.Redis.from_url(redis_server.url)
    try:
        gw1.proc.send_signal(signal.SIGSTOP)  # it cannot resubscribe until we let it
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
        acks = [await sender.send("#devs", f"while gw1 was cut off {i}") for i in range(3)]
    finally:
        gw1.proc.send_signal(signal.SIGCONT)
        admin.close()
    for client in (owner, member):
        got = [await wait_for_event(client, lambda e: isinstance(e, f.Message), 10) for _ in range(3)]
        assert [m.id for m in got] == [a.id for a in acks]  # type: ignore[union-attr]
    nxt = await sender.send("#devs", "live again")
    got_next = await wait_for_event(owner, lambda e: isinstance(e, f.Message), 10)
    assert got_next.id == nxt.id  # type: ignore[union-attr]


async def test_leaving_a_group_during_a_pubsub_outage_first_delivers_what_was_stored(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """tests/chaos/test_nemesis.py seed 3: a member whose gateway had lost its subscriptions left
    the group before the catch-up ran; what the group stored while they were still a member never
    reached them (no catch-up or resume covers a group you are no longer in)."""
    gw1 = processes.gateway(redis_server.url)
    gw2 = processes.gateway(redis_server.url)
    member = await clients.login(gw1.url, "member")
    sender = await clients.login(gw2.url, "sender")
    await sender.group("create", "devs")
    await member.group("join", "devs")
    admin = redis_sync.Redis.from_url(redis_server.url)
    try:
        # Subscriptions are cut and cannot come back (SUBSCRIBE is denied); commands still work.
        admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
        acks = [await sender.send("#devs", f"stored while member {i}") for i in range(3)]
        await member.group("leave", "devs")
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
        admin.close()
    got = [await wait_for_event(member, lambda e: isinstance(e, f.Message), 10) for _ in range(3)]
    assert [m.id for m in got] == [a.id for a in acks]  # type: ignore[union-attr]
