"""Background loops that call Redis end on a ``cancel()`` that redis-py's ``wait_for`` swallowed.

On Python 3.11 ``asyncio.wait_for`` returns the inner result, and drops the
cancel, when the cancel lands as the inner call completes; redis-py wraps its
socket I/O in ``wait_for`` once ``socket_timeout`` is set (common/redis.py sets
it).  A loop that sleeps and calls Redis again then runs on after ``cancel()``,
and a shutdown that awaits it hangs.  Each loop checks
``common.runtime.end_if_cancelled`` (tests/unit/test_runtime.py shows the
mechanism on a bare ``wait_for``).

Here the loops run against a real redis-server.  What makes the timing
deterministic is :class:`CancelAtReply`: every Redis call of the client goes
through a real ``asyncio.wait_for`` whose inner coroutine awaits the real
reply and, when armed, cancels the calling task right then -- the cancel lands
in the very step the inner call completes, which is the swallow.  The control
test proves the harness really swallows: a loop without the check runs on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from common import keys
from common.config import Settings
from common.runtime import cancel_and_wait
from gateway import lease
from gateway.accounts import Accounts
from gateway.server import Gateway
from presence.registry import Registry
from presence.service import Reaper
from tests.helpers import RedisServer, async_wait_until

T = TypeVar("T")
SWALLOWS = sys.version_info < (3, 12)  # 3.12 rebuilt wait_for on asyncio.timeout, which does not swallow
ENDS_WITHIN = 5.0  # seconds a cancelled loop may take to end (each needs well under one of its turns)


class CancelAtReply:
    """Cancels an armed task the moment one of its Redis replies arrives, inside a real ``wait_for``."""

    def __init__(self) -> None:
        self.target: asyncio.Task[Any] | None = None
        self.swallowed = False  # a wait_for returned its result although the cancel had landed
        self.calls: dict[asyncio.Task[Any], int] = {}  # Redis calls answered, per task

    def arm(self, task: asyncio.Task[Any]) -> None:
        self.target = task

    async def around(self, call: Awaitable[T]) -> T:
        caller = asyncio.current_task()
        fire = caller is not None and caller is self.target

        async def inner() -> T:
            result = await call
            if fire and caller is not None:
                self.target = None
                caller.cancel()  # the reply is in: the inner call completes in this very step
            return result

        result = await asyncio.wait_for(inner(), 30)
        if caller is not None:
            self.calls[caller] = self.calls.get(caller, 0) + 1
        if fire:
            self.swallowed = True  # only reached when wait_for dropped the cancel
        return result


class _SwallowingPipeline(Pipeline):
    canceller: CancelAtReply

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return await self.canceller.around(super().execute(raise_on_error))


class SwallowingRedis(Redis):
    """A real redis-py client (``socket_timeout`` set, as in common/redis.py) whose calls go through
    :class:`CancelAtReply`."""

    canceller: CancelAtReply

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        call = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return await self.canceller.around(call)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = _SwallowingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.canceller = self.canceller
        return pipe


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[SwallowingRedis]:
    client = SwallowingRedis(host="127.0.0.1", port=redis_server.port, socket_timeout=5.0)
    client.canceller = CancelAtReply()
    yield client
    await client.aclose()


async def _cancel_at_next_reply(redis: SwallowingRedis, task: asyncio.Task[Any]) -> None:
    """Arm the swallow, and return once the loop has ended (or fail after ``ENDS_WITHIN``)."""
    redis.canceller.arm(task)
    done, _ = await asyncio.wait({task}, timeout=ENDS_WITHIN)
    if task not in done:
        task.cancel()  # a cancel landing in its sleep ends it, so the test leaves nothing running
        await asyncio.wait({task}, timeout=ENDS_WITHIN)
    assert task in done, "the loop ran on after a cancel"
    assert task.cancelled(), f"the loop ended without the cancel: {task.result()!r}"
    if SWALLOWS:
        assert redis.canceller.swallowed, "the harness did not reproduce the swallow"


async def test_control_a_loop_without_the_check_runs_on_after_the_swallowed_cancel(
    redis: SwallowingRedis,
) -> None:
    """Proves the harness: the same armed cancel, and a plain Redis loop is not stopped by it."""
    turns = 0

    async def plain() -> int:
        nonlocal turns
        for _ in range(200):  # bounded: about a second of PINGs
            await redis.ping()
            turns += 1
            await asyncio.sleep(0.005)
        return turns

    task = asyncio.create_task(plain())
    await async_wait_until(lambda: turns > 2, 5, "the loop's first turns")
    redis.canceller.arm(task)
    await asyncio.wait({task}, timeout=30)
    assert task.done()
    if SWALLOWS:
        assert redis.canceller.swallowed and not task.cancelled() and task.result() == 200


async def test_presence_reaper_ends_on_a_swallowed_cancel(redis: SwallowingRedis) -> None:
    reaper = Reaper(Registry(redis, lease_ttl=1.0), Settings(lease_ttl=1.0, reap_interval=0.05))
    task = asyncio.create_task(reaper.run())
    await async_wait_until(lambda: reaper.sweeps >= 2, 5, "the reaper's first sweeps")
    await _cancel_at_next_reply(redis, task)


async def test_gateway_lease_loop_ends_on_a_swallowed_cancel(
    redis: SwallowingRedis, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_server.url, lease_ttl=0.3, data_dir=str(tmp_path),
                        argon2_memory_kib=1024, argon2_time_cost=1)
    gateway = Gateway(settings, redis=redis)
    try:
        task = asyncio.create_task(lease.run(gateway))
        await async_wait_until(lambda: redis.canceller.calls.get(task, 0) >= 3, 5, "the lease registered and renewed")
        await _cancel_at_next_reply(redis, task)
    finally:
        gateway.accounts.close()
        await gateway.pipeline.aclose()


async def test_skeleton_backfill_ends_on_a_swallowed_cancel(redis: SwallowingRedis) -> None:
    """The backfill scans every stored account in one go: without the check a swallowed cancel lets it
    scan them all and return normally."""
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(2000):
            pipe.hset(keys.account(f"user{i}"), "name", f"user{i}")
        await pipe.execute()
    accounts = Accounts(redis, time_cost=1, memory_kib=1024)
    try:
        task = asyncio.create_task(accounts.backfill_skeletons(batch=100))
        await _cancel_at_next_reply(redis, task)  # armed before its first call
        assert not await redis.exists(keys.SKELETONS_BACKFILLED)
    finally:
        accounts.close()


async def test_superseded_catch_up_stops_on_a_swallowed_cancel(
    redis: SwallowingRedis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A catch-up is cancelled when a newer one supersedes it; one that swallowed the cancel and ran on
    would release the live frames the newer one holds back until its own replay is written."""
    settings = Settings(redis_url=redis_server.url, data_dir=str(tmp_path), argon2_memory_kib=1024,
                        argon2_time_cost=1)
    gateway = Gateway(settings, redis=redis)
    try:
        gateway.recovery.start()
        task = gateway.recovery.task
        assert task is not None
        await _cancel_at_next_reply(redis, task)  # armed before its first call
    finally:
        await cancel_and_wait(list(gateway._tasks))
        gateway.accounts.close()
        await gateway.pipeline.aclose()
