"""login.presence: each change as it happens, changes coalesced per window, or none."""

from __future__ import annotations

import asyncio

import pytest

from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer, presence_changes, wait_for_event, wait_for_presence

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
