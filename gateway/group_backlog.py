"""What a group membership that ended unseen still owes a session, written before it stops hearing of the group.

A removal (or a leave on another session) can end a membership while this
gateway could not see it happen in order: the ``part`` notice arrived while live
frames were held for a catch-up, the pub/sub link was down, or the client was
reconnecting.  Redis records each ended membership's span (``Groups.parted``:
since, upto); what the group stored inside that span and the session has not had
yet is written here, id-checked by the session (never twice) and bounded by the
span (never anything from outside a membership).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from common import keys
from common.backoff import Backoff
from common.redis import REDIS_ERRORS
from common.runtime import end_if_cancelled
from protocol.names import id_tuple

from .groups import Groups
from .session import Session

log = logging.getLogger("chinwag.groups")

Spawn = Callable[[Awaitable[Any], str], "asyncio.Task[Any]"]
Replayer = Callable[[str, str], Awaitable[Any]]  # (stream, after id) -> a Replay (``.frames``: (id, frame))
_OWED_DEADLINE = 60.0  # seconds a removed member's backlog is retried while Redis cannot answer


class Unheard(Protocol):
    """A pending join as :meth:`GroupBacklog.cover` sees it (group_relay._Pending)."""

    unheard: bool  # a catch-up ran (verify) while Redis had not answered the join
    cancelled: bool  # removed again before the join took effect


class GroupBacklog:
    """Writes the rest of ended memberships: in the background (``deliver``), at login (``at_login``),
    and before a membership that began again moves the session's position on (``write_ended``).
    Without a ``replay`` (unit tests of the relay alone) it writes nothing."""

    def __init__(self, groups: Groups, spawn: Spawn, replay: Replayer | None = None) -> None:
        self.groups = groups
        self._spawn = spawn
        self._replay = replay  # reads a stream after an id (Store.replay)

    def deliver(self, session: Session, gkey: str, since: str, upto: str) -> None:
        """In the background: write ``gkey``'s messages after ``since`` and up to ``upto`` (a membership
        Redis recorded as ended) that ``session`` has not had (id-checked, so never twice)."""
        if self._replay is None:
            return
        start = max(session.last_group.get(gkey, (0, 0)), id_tuple(since))
        if start >= id_tuple(upto):
            return
        self._spawn(self._deliver(session, gkey, since, upto), "group-owed")

    async def at_login(
        self, ukey: str, resume: dict[str, str], joined: set[str]
    ) -> list[tuple[str, list[bytes]]]:
        """Groups a client resumes (``resume``: group key -> its position) that the owner removed the user
        from (not in ``joined``): per group, what was stored after the position, within the membership
        that ended (a removal while the client was reconnecting, or its session cut off from Redis).
        The position only narrows what the membership recorded, so nothing outside it is sent."""
        gone = {gkey: pos for gkey, pos in resume.items() if gkey not in joined}
        if not gone or self._replay is None:
            return []
        out = []
        for gkey, (since, upto) in (await self.groups.parted(ukey, list(gone))).items():
            start, bound = max(id_tuple(gone[gkey]), id_tuple(since)), id_tuple(upto)
            if start >= bound:
                continue
            replay = await self._replay(keys.group_stream(gkey), f"{start[0]}-{start[1]}")
            frames = [data for mid, data in replay.frames if id_tuple(mid) <= bound]
            if frames:
                out.append((gkey, frames))
        return out

    async def _deliver(self, session: Session, gkey: str, since: str, upto: str) -> None:
        assert self._replay is not None
        bound = id_tuple(upto)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _OWED_DEADLINE
        backoff = Backoff(base=0.05, cap=1.0)
        while True:
            end_if_cancelled()  # the replay's redis-py calls may have swallowed a cancel
            start = max(session.last_group.get(gkey, (0, 0)), id_tuple(since))
            if start >= bound or session.ws.state is not State.OPEN:
                return
            try:
                replay = await self._replay(keys.group_stream(gkey), f"{start[0]}-{start[1]}")
                for mid, frame in replay.frames:
                    if id_tuple(mid) > bound:
                        break
                    await session.replay_group(gkey, frame, member=True)
                return
            except ConnectionClosed:
                return
            except REDIS_ERRORS as exc:
                if loop.time() > deadline:
                    log.error("%s: gave up writing what %s stored before the removal (%s)", session.name, gkey,
                              type(exc).__name__)
                    return
                await asyncio.sleep(backoff.next_delay())

    async def write_ended(self, session: Session, gkey: str) -> None:
        """Before a new membership's position moves ``session`` on: write what the user's previous
        membership (recorded when it ended, while this session missed it) stored after what the session
        has had.  Bounded by that record, so nothing from outside a membership is written."""
        if self._replay is None:
            return
        ended = (await self.groups.parted(session.key, [gkey])).get(gkey)
        if ended is None:
            return
        start = max(session.last_group.get(gkey, (0, 0)), id_tuple(ended[0]))
        bound = id_tuple(ended[1])
        if start >= bound:
            return
        for mid, frame in (await self._replay(keys.group_stream(gkey), f"{start[0]}-{start[1]}")).frames:
            if id_tuple(mid) > bound:
                break
            with contextlib.suppress(ConnectionClosed):
                await session.replay_group(gkey, frame, member=True)

    async def cover(self, session: Session, gkey: str, position: str, pending: Unheard | None) -> None:
        """A join Redis answered (membership from ``position``) after a catch-up had run without it
        (``pending.unheard``, set by ``GroupRelay.verify``): its marker may be lost with the link, the
        frames before the catch-up gave up on it were dropped as "before the marker", and the catch-up
        replayed nothing for it (not a member there yet).  So, before delivery starts, write what the
        group stored from ``position`` up to its position now, while the membership is still the one
        that began at ``position`` (else its end governs); later messages are parked live, or lost
        with another outage, whose catch-up sets ``unheard`` again (so read again) or, once a member,
        replays them.  Soak seed 5201."""
        while pending is not None and pending.unheard and not pending.cancelled and self._replay is not None:
            pending.unheard = False
            view = (await self.groups.views(session.key, [gkey]))[gkey]
            if view.since is None or id_tuple(view.since) != id_tuple(position):
                return  # ended (and maybe begun again) meanwhile: the removal's record governs
            start, bound = max(session.last_group.get(gkey, (0, 0)), id_tuple(position)), id_tuple(view.now)
            if start >= bound:
                continue
            for mid, frame in (await self._replay(keys.group_stream(gkey), f"{start[0]}-{start[1]}")).frames:
                if id_tuple(mid) > bound:
                    break
                with contextlib.suppress(ConnectionClosed):
                    await session.replay_group(gkey, frame, member=True)
