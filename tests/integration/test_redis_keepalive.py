"""The pub/sub keepalive: an idle gateway never flaps its subscription; a stalled Redis is noticed at once.

Against a real redis-server.  The router runs on uvloop, as in production:
its timers have millisecond granularity and wake a little early or late, which
is what made the old keepalive time out healthy, idle connections.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import uvloop

from gateway.router import Router
from tests.helpers import Processes, RedisServer, async_wait_until, wait_until

KEEPALIVE = 0.05  # seconds of silence before a PING
IDLE_SECONDS = 8.0  # 160 keepalive intervals


def _redis_pings(redis: RedisServer) -> int:
    """PINGs Redis has answered so far (INFO commandstats), to prove the keepalive really runs."""
    with socket.create_connection(("127.0.0.1", redis.port), timeout=2) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
            data += s.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_ping:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


def test_an_idle_router_makes_no_reconnects_over_many_keepalive_intervals(redis_server: RedisServer) -> None:
    async def main() -> tuple[int, int]:
        router = Router(redis_server.url, keepalive=KEEPALIVE)
        router.ping_timeout = 1.0  # generous for a loaded machine, still far below IDLE_SECONDS
        router.set_handler("cw:test", lambda _: None)
        task = asyncio.ensure_future(router.run())
        try:
            await async_wait_until(lambda: router.live, 10, "the router to connect")
            pings_before = _redis_pings(redis_server)
            await asyncio.sleep(IDLE_SECONDS)  # the idleness under test, not synchronisation
            return router.reconnects, _redis_pings(redis_server) - pings_before
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    reconnects, pings = uvloop.run(main())
    print(f"\nidle router: {reconnects} reconnects, {pings} PINGs in {IDLE_SECONDS:.0f}s at keepalive {KEEPALIVE}s")
    assert reconnects == 0
    # It does keep the connection checked: a PING every interval or so (some slack for a loaded machine).
    assert pings >= IDLE_SECONDS / KEEPALIVE / 4


def _reconnects(gw: object) -> float:
    for line in gw.http_get("/metrics").splitlines():  # type: ignore[attr-defined]
        if line.startswith("chinwag_redis_reconnects_total "):
            return float(line.split()[1])
    raise AssertionError("no chinwag_redis_reconnects_total in /metrics")


async def test_idle_gateway_stays_subscribed_and_a_redis_pause_makes_it_unready_within_the_ping_timeout(
    redis_server: RedisServer, processes: Processes
) -> None:
    ping_timeout = 1.0
    gw = processes.gateway(redis_server.url, env={
        "CHINWAG_REDIS_PING_INTERVAL": "0.1", "CHINWAG_REDIS_PING_TIMEOUT": str(ping_timeout),
    })
    await asyncio.sleep(3)  # idle: 30 keepalive intervals (the idleness under test)
    assert _reconnects(gw) == 0
    assert "Redis pub/sub unavailable" not in gw.log()

    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        paused = time.monotonic()
        await async_wait_until(lambda: gw.ready_status() == 503, ping_timeout + 1.5, "/readyz 503 after the pause")
        unready_after = time.monotonic() - paused
        print(f"\nRedis paused: /readyz 503 after {unready_after:.2f}s (ping timeout {ping_timeout}s)")
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: gw.ready_status() == 200, 15, "/readyz 200 after the pause ended")
