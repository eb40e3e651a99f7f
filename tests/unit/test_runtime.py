"""common.runtime's answers to a ``cancel()`` that a library swallowed.

The swallowing is real, not staged: on Python 3.11, ``asyncio.wait_for`` -- which
redis-py puts around every socket write when ``socket_timeout`` is set -- returns
the inner result when the cancel lands in the loop iteration the inner call
completes in.  That is what left tests/integration/test_redis_cluster.py's
publisher running after ``cancel()`` and the test hanging.
"""

from __future__ import annotations

import asyncio
import sys

from common.runtime import end_if_cancelled


async def _quick() -> None:
    return None


async def _writes(check: bool, turns: int = 100_000) -> None:
    """A loop whose every turn is a ``wait_for`` that completes at once (a socket write's shape)."""
    for _ in range(turns):  # bounded (100 000 turns take about 4 s)
        if check:
            end_if_cancelled()
        await asyncio.wait_for(_quick(), 5)


async def _cancel_mid_write(task: asyncio.Task[None]) -> None:
    await asyncio.sleep(0)  # the task starts its wait_for: the inner call is scheduled
    await asyncio.sleep(0)  # ... and completes in this iteration, while the cancel below lands
    task.cancel()


async def test_a_loop_that_checks_ends_after_a_cancel_that_wait_for_swallowed() -> None:
    task = asyncio.create_task(_writes(check=True))
    await _cancel_mid_write(task)
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()


async def test_without_the_check_the_cancel_is_swallowed_and_the_loop_runs_on() -> None:
    """The control for the test above: the same cancel, and nothing ends the loop but its last turn.

    ``cancel_and_wait``'s repeated cancels do not help such a loop either: here every one of them
    lands while a ``wait_for`` has just completed, and is swallowed too.
    """
    task = asyncio.create_task(_writes(check=False, turns=2000))
    await _cancel_mid_write(task)
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done
    if sys.version_info < (3, 12):  # 3.12 rebuilt wait_for on asyncio.timeout, which does not swallow
        assert not task.cancelled() and task.cancelling() == 1  # all its turns ran; the cancel stayed unanswered
