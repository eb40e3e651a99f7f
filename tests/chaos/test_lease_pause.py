"""A gateway paused (SIGSTOP) for longer than its lease loses no acknowledged DM.

alice is on gateway C.  C is frozen past its lease; the presence service reaps
it and frees alice's name.  bob sends alice 4 DMs (acked, stored, but with no
session to publish to).  C resumes, finds its lease gone, re-claims alice's
name, and bob sends a fifth DM.  alice's still-open connection must get all 5
exactly once and in order, the server's ``delivered`` cursor must never pass a
DM her connection has not received, and fresh logins with and without resume
positions must replay exactly what they should.
"""

from __future__ import annotations

import signal

import pytest
import redis.asyncio as redis_async

from client import ChatClient
from common import keys
from presence.registry import Registry
from protocol import frames as f
from protocol.names import id_tuple
from tests.helpers import Clients, Processes, RedisServer, async_wait_until, wait_for_event

LEASE = {"CHINWAG_LEASE_TTL": "1.5", "CHINWAG_REAP_INTERVAL": "0.2"}


async def _next_message(client: ChatClient, timeout: float = 10) -> f.Message:
    event = await wait_for_event(client, lambda e: isinstance(e, f.Message), timeout)
    assert isinstance(event, f.Message)
    return event


async def _delivered(admin: redis_async.Redis, user: str) -> tuple[int, int]:
    raw = await admin.hget(keys.account(user), "delivered")
    return id_tuple(raw.decode()) if raw else (0, 0)


@pytest.mark.timeout(120)
async def test_pause_past_the_lease_loses_no_acked_dm(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    processes.presence(redis_server.url, env=LEASE)
    paused = processes.gateway(redis_server.url, env=LEASE, args=["--node-id", "gw-paused"])
    other = processes.gateway(redis_server.url, env=LEASE)
    admin = redis_async.Redis.from_url(redis_server.url)
    alice = await clients.login(paused.url, "alice")
    bob = await clients.login(other.url, "bob")
    received: list[f.Message] = []

    cursors: list[tuple[int, int]] = []  # the delivered cursor as seen along the way

    async def cursor_never_skips() -> None:
        cursors.append(await _delivered(admin, "alice"))

    def check_cursors() -> None:
        # Every inbox DM at or below any cursor seen must be one alice's open connection received.
        got = {id_tuple(m.id) for m in received}
        for cursor in cursors:
            for mid in inbox:
                assert mid > cursor or mid in got, f"delivered cursor {cursor} skipped {mid}"

    first = await bob.send("@alice", "before the pause")
    received.append(await _next_message(alice))
    assert received[0].id == first.id
    await cursor_never_skips()

    assert paused.proc is not None
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        await async_wait_until(
            lambda: _reaped(admin), 20,
            "the presence service to reap the paused gateway",
        )
        during = [await bob.send("@alice", f"during the pause {i}") for i in range(4)]
        await cursor_never_skips()
        assert cursors[-1] < id_tuple(during[0].id)
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    # C notices its lost lease and takes alice's name back (or closes her socket): either way
    # the name is held again before the next DM.
    await async_wait_until(lambda: admin.exists(keys.session("alice")), 20, "alice's name to be held again")
    after = await bob.send("@alice", "after the pause")
    expected = [a.id for a in [*during, after]]
    while len(received) < 6:
        received.append(await _next_message(alice, 15))
        await cursor_never_skips()
    assert [m.id for m in received[1:]] == expected, "alice's open connection missed or reordered DMs"
    assert alice.duplicates == 0
    await async_wait_until(lambda: _cursor_at(admin, after.id), 10, "the delivered cursor to reach the last DM")
    inbox = [id_tuple(mid.decode()) for mid, _ in await admin.xrange(keys.inbox_stream("alice"))]
    assert len(inbox) == 6
    check_cursors()

    # A fresh login resuming from before the pause replays the 5 DMs, in order, once.
    await alice.close()
    resumer = ChatClient(other.url, reconnect=False)
    clients.clients.append(resumer)
    await resumer.connect()
    resumer.positions = {f.STREAM_DM: first.id}
    await resumer.login("alice", "pw")
    replayed = [await _next_message(resumer) for _ in range(5)]
    assert [m.id for m in replayed] == expected
    await resumer.close()
    # Without positions: the cursor stands after the last DM alice received, so nothing is replayed,
    # and the next DM is the first thing she sees.
    plain = await clients.login(paused.url, "alice")
    assert plain.welcome is not None and plain.welcome.positions[f.STREAM_DM] == after.id
    last = await bob.send("@alice", "the next one")
    assert (await _next_message(plain)).id == last.id
    await admin.aclose()


async def _reaped(admin: redis_async.Redis) -> bool:
    return await admin.zscore(keys.GATEWAYS, "gw-paused") is None and not await admin.exists(keys.session("alice"))


async def _cursor_at(admin: redis_async.Redis, mid: str) -> bool:
    return await _delivered(admin, "alice") >= id_tuple(mid)


@pytest.mark.timeout(120)
async def test_frames_buffered_during_a_stall_wait_for_the_lease_check(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """Soak seed 2102: while a gateway was stopped past its lease (reaped, alice's name freed), a DM was
    stored and published nowhere; then something else held alice's name (there a stale re-claim on
    another gateway; here a claim made by hand, no kick) and the next DM was published on her channel,
    which the stopped gateway was still subscribed to.  Resumed, it delivered that DM before its first
    renewal said the lease was gone, and alice's position moved past the first one.  Now a gateway whose
    last renewal is older than the lease treats it as lost before handing on any live frame."""
    processes.presence(redis_server.url, env=LEASE)
    paused = processes.gateway(redis_server.url, env=LEASE, args=["--node-id", "gw-paused"])
    other = processes.gateway(redis_server.url, env=LEASE)
    admin = redis_async.Redis.from_url(redis_server.url)
    registry = Registry(admin, lease_ttl=1.5)
    alice = await clients.login(paused.url, "alice", reconnect=True, backoff_cap=0.3)
    alice.takeover_patience = 60
    bob = await clients.login(other.url, "bob")
    first = await bob.send("@alice", "before the pause")
    assert (await _next_message(alice)).id == first.id
    assert paused.proc is not None
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        await async_wait_until(lambda: _reaped(admin), 20, "the presence service to reap the paused gateway")
        unpublished = await bob.send("@alice", "stored while alice's name was free")
        await registry.register_gateway("gw-elsewhere")
        assert await registry.claim("alice", "alice", "gw-elsewhere", "a-token-of-someone-else")
        published = await bob.send("@alice", "published while the gateway was stopped")
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    got = [await _next_message(alice, 30), await _next_message(alice, 30)]
    assert [m.id for m in got] == [unpublished.id, published.id]
    await admin.aclose()
