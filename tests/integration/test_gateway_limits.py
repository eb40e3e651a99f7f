"""Connection-level behaviour: login timeout, slow consumers, health endpoints, Redis down at login."""

from __future__ import annotations

import asyncio

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client.chat import Closed
from protocol import frames as f
from protocol.errors import Unavailable
from tests.helpers import Clients, Processes, RedisServer, async_wait_until, wait_for_event, wait_for_presence


async def test_no_login_in_time_closes_4002(redis_server: RedisServer, processes: Processes) -> None:
    gw = processes.gateway(redis_server.url, args=["--login-timeout", "0.5"])
    async with connect(gw.url) as ws:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4002


async def test_slow_consumer_is_cut_off_and_others_carry_on(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    gw = processes.gateway(redis_server.url, args=["--max-write-buffer", "65536"])
    sender = await clients.login(gw.url, "sender")
    watcher = await clients.login(gw.url, "watcher")
    # A client that logs in and then never reads again.
    sleepy = await connect(gw.url, max_queue=1)
    await sleepy.send(f.encode(f.Login(v=1, user="sleepy", password="pw")), text=True)
    assert b'"welcome"' in (await asyncio.wait_for(sleepy.recv(decode=False), 5))
    sleepy.transport.pause_reading()
    assert gw.proc is not None
    rss_before = psutil.Process(gw.proc.pid).memory_info().rss
    body = "x" * 8000
    for _ in range(2000):  # ~16 MB: far past socket buffers and the 64 KiB bound
        try:
            await sender.send("@sleepy", body)
        except Exception:
            break
        if "slow consumer" in gw.log():
            break
    await wait_for_presence(watcher, "sleepy", "offline", 15)
    assert "closing as slow consumer" in gw.log()
    grown = psutil.Process(gw.proc.pid).memory_info().rss - rss_before
    print(f"\nslow consumer: gateway RSS grew {grown / 2**20:.1f} MiB until the non-reader was cut off")
    assert grown < 64 * 2**20  # bounded by the write-buffer cap, not by what was sent
    await sender.send("@watcher", "still fine")
    got = await wait_for_event(watcher, lambda e: isinstance(e, f.Message))
    assert got.body == "still fine"  # type: ignore[union-attr]
    sleepy.transport.abort()


async def test_health_endpoints(redis_server: RedisServer, processes: Processes) -> None:
    gw = processes.gateway(redis_server.url)
    assert gw.http_status("/healthz") == 200
    assert gw.http_status("/readyz") == 200
    redis_server.stop()
    await asyncio.to_thread(_wait_status, gw, 503)
    assert gw.http_status("/healthz") == 200  # alive, just not ready
    redis_server.start()
    await asyncio.to_thread(_wait_status, gw, 200)


def _wait_status(gw: object, status: int) -> None:
    from tests.helpers import wait_until

    wait_until(lambda: gw.http_status("/readyz") == status, 10, f"/readyz {status}")  # type: ignore[attr-defined]


async def test_login_while_redis_is_down_gets_unavailable(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    gw = processes.gateway(redis_server.url)
    redis_server.stop()
    raw = await clients.raw(gw.url)
    with pytest.raises(Unavailable):
        await raw.login("alice", "pw")
    closed = await wait_for_event(raw, lambda e: isinstance(e, Closed), 5)
    assert isinstance(closed, Closed) and closed.code == 1013


async def test_a_full_gateway_turns_the_next_socket_away_and_takes_one_again_after_a_close(
    redis_server: RedisServer, processes: Processes
) -> None:
    """--max-connections counts open sockets (the cheap bound in admission.py must not change that)."""
    gw = processes.gateway(redis_server.url, env={"CHINWAG_MAX_CONNECTIONS": "3"})
    held = [await connect(gw.url) for _ in range(3)]
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(gw.url)
        assert refused.value.response.status_code == 503
        await held.pop().close()

        async def admitted() -> bool:
            try:
                held.append(await connect(gw.url))
            except InvalidStatus:
                return False
            return True
        # The closed socket leaves the server's set when its handler ends.
        await async_wait_until(admitted, 5, "the freed slot to be given out again")
    finally:
        for ws in held:
            await ws.close()
