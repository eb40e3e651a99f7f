"""login.presence: each change as it happens, changes coalesced per window, or none."""

from __future__ import annotations

import asyncio
import signal

import pytest

from protocol import frames as f
from tests.helpers import (
    Clients,
    Processes,
    RedisServer,
    async_wait_until,
    presence_changes,
    wait_for_event,
    wait_for_presence,
)

WINDOW = 1.5  # long enough that logins made together fall into one window on any machine


@pytest.fixture
def gateways(redis_server: RedisServer, processes: Processes) -> tuple[str, str]:
    env = {"CHINWAG_PRESENCE_BATCH": str(WINDOW)}
    return processes.gateway(redis_server.url, env=env).url, processes.gateway(redis_server.url, env=env).url


async def test_batched_logins_come_as_one_frame_each_mode_as_many_off_as_none(
    gateways: tuple[str, str], clients: Clients
) -> None:
    url1, url2 = gateways
    each = await clients.login(url1, "each", presence="each")
    batched = await clients.login(url1, "batched", presence="batched")
    off = await clients.login(url1, "off", presence="off")
    assert off.welcome is not None and off.welcome.online == []  # not following presence: no list either
    # Let the watchers' own login events pass (the batched one may get them in a first batch).
    await wait_for_presence(each, "off")
    await wait_for_presence(batched, "off")

    names = [f"user{i}" for i in range(6)]
    await asyncio.gather(*(clients.login(url2, name) for name in names))

    seen: set[str] = set()
    frames = 0
    while seen != set(names):
        event = await wait_for_event(batched, lambda e: bool(presence_changes(e)), 2 * WINDOW + 5)
        assert isinstance(event, f.PresenceBatch)
        frames += 1
        seen.update(user for user, status in presence_changes(event, status="online") if user in names)
    assert frames < len(names), f"{frames} batches for {len(names)} logins"
    assert batched.online >= set(names)

    singles = [await wait_for_event(each, lambda e: isinstance(e, f.Presence) and e.user in names) for _ in names]
    assert {e.user for e in singles} == set(names)  # type: ignore[union-attr]

    # "off" heard nothing: the first thing it receives after all that is this DM.
    await each.send("@off", "marker")
    first = await wait_for_event(off, lambda e: True)
    assert isinstance(first, f.Message) and first.body == "marker"
    assert set(await off.who()) >= set(names)  # who still answers


async def test_a_batch_carries_each_users_latest_status(gateways: tuple[str, str], clients: Clients) -> None:
    url1, url2 = gateways
    watcher = await clients.login(url1, "watcher", presence="batched")
    await wait_for_presence(watcher, "watcher")
    flicker = await clients.login(url2, "flicker")
    await flicker.close()  # online and offline again within one window
    changes = await wait_for_presence(watcher, "flicker", timeout=2 * WINDOW + 5)
    assert changes == [("flicker", "offline")]
    assert "flicker" not in watcher.online


async def test_a_batched_user_back_on_its_reaped_gateway_sees_itself_online(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """Soak seed 7000: a gateway paused past its lease was reaped (``offline u5`` published, buffered for it);
    meanwhile u5's client dropped its socket and reconnected to the same gateway.  Resumed, the gateway put
    the stale ``offline u5`` in the window's batch for the old (batched) socket, which then closed; the new
    login's ``online u5`` came while no batched socket was live and was held for the login alone, so the
    batch flushed after the login still said ``offline u5``, the last word u5 ever got about itself."""
    env = {"CHINWAG_LEASE_TTL": "1.0", "CHINWAG_REAP_INTERVAL": "0.2"}
    processes.presence(redis_server.url, env=env)
    paused = processes.gateway(redis_server.url, env=env)
    other = processes.gateway(redis_server.url, env=env)
    u0 = await clients.login(other.url, "u0", reconnect=True)
    u5 = await clients.login([paused.url, other.url], "u5", reconnect=True)  # batched, as clients are by default
    everyone = {"u0", "u5"}
    await async_wait_until(lambda: u5.online == everyone and u0.online == everyone, 5, "both to see both")
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        ws = u5._ws
        assert ws is not None
        u5._url_index -= 1  # the reconnect steps one on: back to the paused gateway
        ws.transport.abort()
        await async_wait_until(lambda: "u5" not in u0.online, 10, "the paused gateway to be reaped")
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    await async_wait_until(lambda: u5.state == "connected" and u5.node is not None, 20, "u5 to log in again")
    await async_wait_until(lambda: u5.online == everyone and u0.online == everyone, 5,
                           "presence to converge")
