"""Catching up after the gateway lost its pub/sub link: groups (regressions found by the nemesis test)."""

from __future__ import annotations

import signal
from pathlib import Path

import redis as redis_sync
import redis.asyncio as redis_async

from common.config import Settings
from gateway.server import Gateway
from presence.registry import Registry
from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer, async_wait_until, wait_for_event


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


async def test_a_catch_up_that_ends_while_pubsub_is_down_keeps_holding(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """tests/chaos/test_nemesis.py soak seed 1000: a catch-up (here the one after a lost lease)
    finished while the pub/sub link was down and released the held frames; after the resubscribe
    the first live frames overtook what was stored during the outage and every position jumped
    past it (lost broadcasts, DMs and group messages).  In-process, to see the session's state."""
    settings = Settings(
        redis_url=redis_server.url, port=0, http_port=0, lease_ttl=1.5, argon2_memory_kib=1024,
        argon2_time_cost=1, rate_messages=0, rate_requests=0, ip_connections=0, ip_logins=0,
        data_dir=str(tmp_path), redis_ping_interval=0.2, redis_ping_timeout=0.5,
    )
    gateway = Gateway(settings)
    await gateway.start()
    other = processes.gateway(redis_server.url)
    admin = redis_async.Redis.from_url(redis_server.url)
    try:
        alice = await clients.login(f"ws://127.0.0.1:{gateway.port}", "alice")
        bob = await clients.login(other.url, "bob")
        session = gateway.sessions["alice"]
        # Cut the gateway's subscriptions for good (SUBSCRIBE denied), then reap its lease.
        await admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await async_wait_until(lambda: not gateway.router.live, 5, "the gateway's pub/sub to be down")
        await Registry(admin).release_gateway(gateway.node_id)  # what the reaper does
        during = [await bob.send("@alice", f"during {i}") for i in range(3)]
        await async_wait_until(lambda: gateway._reclaim_pending is False and gateway._recovery is not None
                               and gateway._recovery.done(), 10, "the lease recovery to finish")
        assert session.holding, "released held frames while the subscriptions were still down"
        await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
        after = await bob.send("@alice", "after")
        got = [await wait_for_event(alice, lambda e: isinstance(e, f.Message), 10) for _ in range(4)]
        assert [m.id for m in got] == [a.id for a in [*during, after]]  # type: ignore[union-attr]
    finally:
        await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
        await admin.aclose()
        await gateway.stop()
