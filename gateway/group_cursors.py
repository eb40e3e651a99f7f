"""Group resume positions, saved as they advance.

Delivering a group message marks the session dirty (one attribute write);
:func:`run_cursor_flusher` writes the dirty sessions' positions in one pipelined
round trip per interval (each cursor only moves forward in Redis), and logout
saves them once more (``cursors_of``).  A later login without resume positions
picks each group up there.
"""

from __future__ import annotations

import asyncio
import logging

from common.redis import REDIS_ERRORS
from common.runtime import end_if_cancelled

from .groups import Groups
from .session import Session

log = logging.getLogger("chinwag.groups")


async def flush_cursors(groups: Groups, members: dict[str, set[Session]]) -> int:
    """Save the group positions of every session that received something since the last flush
    (one pipelined round trip); returns how many sessions were written."""
    dirty = {s for group in members.values() for s in group if s.cursors_dirty}
    if not dirty:
        return 0
    for session in dirty:
        session.cursors_dirty = False
    try:
        async with groups.redis.pipeline(transaction=False) as pipe:
            for session in dirty:
                await groups.save_cursors(session.key, cursors_of(session), client=pipe)
            await pipe.execute()
    except BaseException:
        for session in dirty:
            session.cursors_dirty = True
        raise
    return len(dirty)


async def run_cursor_flusher(groups: Groups, members: dict[str, set[Session]], interval: float) -> None:
    """Every ``interval`` seconds, save the positions that advanced (a crash loses at most that much:
    a later login without ``resume`` then sees those messages again, never misses one)."""
    while True:
        end_if_cancelled()  # the flush's redis-py calls may have swallowed a cancel
        await asyncio.sleep(interval)
        try:
            await flush_cursors(groups, members)
        except asyncio.CancelledError:
            raise
        except REDIS_ERRORS as exc:
            log.warning("could not save group positions (%s); retrying", type(exc).__name__)
        except Exception:
            log.exception("saving group positions failed")


def cursors_of(session: Session) -> dict[str, str]:
    """The session's position in each group it is a member of, as ids."""
    return {g: f"{mid[0]}-{mid[1]}" for g, mid in session.last_group.items() if g in session.groups}
