"""Chaos: nothing lost, nothing doubled, across gateway crashes and a Redis restart.

20 clients on 3 gateways send 10,000 DMs and 200 broadcasts at a steady rate.
Mid-run the harness kills gateways with SIGKILL (and starts a replacement), or
restarts Redis (AOF on).  At the end every client must have received every
message addressed to it exactly once, by id, in per-conversation order.  The
counts are printed either way.  The workload and the verdict: tests/chaos/workload.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from client import ChatClient
from tests.chaos.workload import Tally, Workload, run, verdict, wait_acked
from tests.helpers import Proc, Processes, RedisServer, free_port

CLIENTS = 20
DMS = 10_000
BROADCASTS = 200
RATE = 1500.0  # messages per second offered, all clients together
DEADLINE = 120.0  # seconds for the whole run, faults and delivery included


LOAD = Workload(CLIENTS, DMS, BROADCASTS, RATE, DEADLINE)


async def _wait_acked(tally: Tally, n: int) -> None:
    await wait_acked(tally, n, DEADLINE)


async def _run(urls: list[str], fault: Callable[[Tally], Awaitable[None]]) -> tuple[Tally, list[ChatClient]]:
    return await run(urls, fault, LOAD)


def _verdict(tally: Tally, clients: list[ChatClient]) -> None:
    verdict(tally, clients, LOAD)


@pytest.mark.timeout(240)
async def test_gateways_killed_mid_run_lose_and_duplicate_nothing(
    redis_server: RedisServer, processes: Processes
) -> None:
    processes.presence(redis_server.url)
    gateways = [processes.gateway(redis_server.url) for _ in range(3)]
    replacement_port = free_port()
    urls = [g.url for g in gateways] + [f"ws://127.0.0.1:{replacement_port}"]
    replacement: list[Proc] = []

    async def fault(tally: Tally) -> None:
        total = DMS + BROADCASTS
        await _wait_acked(tally, total // 4)
        gateways[0].kill()
        replacement.append(await asyncio.to_thread(processes.gateway, redis_server.url, port=replacement_port))
        await _wait_acked(tally, total * 6 // 10)
        gateways[1].kill()

    tally, clients = await _run(urls, fault)
    _verdict(tally, clients)
    assert sum(c.reconnects for c in clients) >= 2  # the kills really hit connected clients


@pytest.mark.timeout(240)
async def test_redis_restart_mid_run_loses_and_duplicates_nothing(
    redis_server: RedisServer, processes: Processes
) -> None:
    processes.presence(redis_server.url)
    gateways = [processes.gateway(redis_server.url) for _ in range(3)]

    async def fault(tally: Tally) -> None:
        await _wait_acked(tally, (DMS + BROADCASTS) * 4 // 10)
        await asyncio.to_thread(redis_server.stop)  # SIGTERM: Redis flushes its AOF and exits
        await asyncio.to_thread(redis_server.start)

    tally, clients = await _run([g.url for g in gateways], fault)
    _verdict(tally, clients)
    assert all("reconnected to Redis pub/sub" in g.log() for g in gateways)
