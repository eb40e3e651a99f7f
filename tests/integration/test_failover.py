"""Gateways dying, gateways stopping cleanly, and Redis restarting underneath."""

from __future__ import annotations

import time

import pytest

from client import ChatClient
from client.chat import Closed
from protocol import frames as f
from protocol.errors import ChatError, Unavailable, UsernameTaken
from tests.helpers import (
    Clients,
    Proc,
    Processes,
    RedisServer,
    async_wait_until,
    subscriptions_cut,
    wait_for_event,
    wait_for_presence,
)


async def test_kill_9_frees_names_within_15s(redis_server: RedisServer, processes: Processes, clients: Clients) -> None:
    # Production defaults: lease TTL 10 s, reaper sweep every 1 s.
    processes.presence(redis_server.url)
    doomed = processes.gateway(redis_server.url)
    survivor = processes.gateway(redis_server.url)
    watcher = await clients.login(survivor.url, "watcher")
    await clients.login(doomed.url, "alice")
    await clients.login(doomed.url, "bob")
    assert set(await watcher.who()) == {"watcher", "alice", "bob"}

    doomed.kill()
    killed_at = time.monotonic()
    gone: set[str] = set()
    while gone != {"alice", "bob"}:
        gone.update(user for user, _ in await wait_for_presence(watcher, status="offline", timeout=16))
    elapsed = time.monotonic() - killed_at
    assert elapsed < 15, f"names freed after {elapsed:.1f}s"
    again = await clients.login(survivor.url, "alice")
    assert again.user == "alice"
    assert await watcher.who() == ["alice", "watcher"]


async def test_sigterm_closes_1001_and_releases_names_at_once(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    stopping = processes.gateway(redis_server.url)
    other = processes.gateway(redis_server.url)
    watcher = await clients.login(other.url, "watcher")
    alice = await clients.login(stopping.url, "alice")
    assert stopping.terminate() == 0
    closed = await wait_for_event(alice, lambda e: isinstance(e, Closed))
    assert isinstance(closed, Closed) and closed.code == 1001
    assert await wait_for_presence(watcher, status="offline", timeout=2) == [("alice", "offline")]
    # No presence service runs here: the name came free from the shutdown itself.
    assert (await clients.login(other.url, "alice")).user == "alice"
    assert "stopped" in stopping.log()


async def test_redis_restart_sends_work_again_within_5s(
    redis_server: RedisServer, gateway_pair: tuple[Proc, Proc], clients: Clients
) -> None:
    gw1, gw2 = gateway_pair
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    await alice.send("@bob", "before")
    await wait_for_event(bob, lambda e: isinstance(e, f.Message) and e.body == "before")

    redis_server.stop()
    with pytest.raises(Unavailable):
        await alice.send("@bob", "during")
    assert gw1.http_status("/readyz") == 503 or not redis_server.ping()
    redis_server.start()  # same port and data directory: AOF brings the data back
    back_at = time.monotonic()

    async def send_works() -> bool:
        try:
            await alice.send("@bob", "after")
        except ChatError:
            return False
        return True

    await async_wait_until(send_works, 5, "a send to succeed after Redis came back", interval=0.1)
    assert time.monotonic() - back_at < 5
    got = await wait_for_event(bob, lambda e: isinstance(e, f.Message) and e.body == "after", 5)
    assert isinstance(got, f.Message)
    await async_wait_until(lambda: _ready(gw1, gw2), 5, "both gateways ready again")
    assert not gw1.exited() and not gw2.exited()
    assert "reconnected to Redis pub/sub" in gw2.log()
    # Presence survived: the names are still held, so nobody can take them.
    with pytest.raises(UsernameTaken):
        await ChatClient.open(gw2.url, "alice", "pw")


async def _ready(*gateways: object) -> bool:
    return all(g.http_status("/readyz") == 200 for g in gateways)  # type: ignore[attr-defined]


async def test_messages_published_while_subscriptions_are_down_still_arrive(
    redis_server: RedisServer, gateway_pair: tuple[Proc, Proc], clients: Clients
) -> None:
    """Pub/sub drops what is published while a gateway is unsubscribed; the gateway recovers it."""
    gw1, gw2 = gateway_pair
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    carol = await clients.login(gw2.url, "carol")
    with subscriptions_cut(redis_server.url, frozen=gw2):  # both gateways' subscriptions cut
        acks = [await alice.send("@bob", f"missed {i}") for i in range(5)]
        bcast = await alice.send("*", "missed broadcast")
    got = [await wait_for_event(bob, lambda e: isinstance(e, f.Message)) for _ in range(6)]
    assert [m.id for m in got if m.to == "@bob"] == [a.id for a in acks]  # type: ignore[union-attr]
    assert [m.id for m in got if m.to == "*"] == [bcast.id]  # type: ignore[union-attr]
    ev = await wait_for_event(carol, lambda e: isinstance(e, f.Message) and e.to == "*")
    assert ev.id == bcast.id  # type: ignore[union-attr]
    # Exactly once: the next live message is the next thing bob sees.
    await alice.send("@bob", "live again")
    nxt = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    assert nxt.body == "live again"  # type: ignore[union-attr]


async def test_gateway_restarted_with_the_same_node_id_frees_its_predecessors_names(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    first = processes.gateway(redis_server.url, args=["--node-id", "gw-fixed"])
    watcher_gw = processes.gateway(redis_server.url)
    await clients.login(first.url, "alice")
    first.kill()  # no presence service runs, and the lease would still be fresh
    processes.gateway(redis_server.url, args=["--node-id", "gw-fixed"], port=first.port)
    again = await clients.login(watcher_gw.url, "alice")  # free at once, not after a lease expiry
    assert again.user == "alice"


def test_a_taken_port_fails_fast_with_a_clear_error(redis_server: RedisServer, processes: Processes) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        gw = processes.gateway(redis_server.url, port=port, start=False).start(wait_ready=False)
        assert gw.proc is not None and gw.proc.wait(20) == 1
        assert "cannot start" in gw.log() and "Traceback" not in gw.log()
