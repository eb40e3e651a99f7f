"""Production-cost password hashing must not leave its buffers in the gateway's memory."""

from __future__ import annotations

import asyncio

import psutil

from tests.helpers import Clients, Processes, RedisServer

MEMORY_KIB = 16 * 1024  # per hash; the default is 19 MiB


async def test_argon2_buffers_go_back_to_the_os(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    gateway = processes.gateway(
        redis_server.url, env={"CHINWAG_ARGON2_MEMORY_KIB": str(MEMORY_KIB), "CHINWAG_ARGON2_TIME_COST": "1"}
    )
    assert gateway.proc is not None
    proc = psutil.Process(gateway.proc.pid)
    await clients.login(gateway.url, "warmup")  # imports, pools and the first hash are paid for
    before = proc.memory_info().rss
    gate = asyncio.Semaphore(6)  # both hashing threads busy most of the time

    async def login(i: int) -> None:
        async with gate:
            await clients.login(gateway.url, f"user{i}", presence="off")

    await asyncio.gather(*(login(i) for i in range(24)))
    grown = (proc.memory_info().rss - before) / 2**20
    # Kept buffers would be one 16 MiB buffer per hashing thread (32 MiB); returned ones, nothing.
    assert grown < 12, f"RSS grew {grown:.1f} MiB over 24 logins"
