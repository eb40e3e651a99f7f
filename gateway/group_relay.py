"""Which local sessions receive a group's frames: Redis decides membership, then delivery starts.

The rule this module keeps: a group ``message`` is written to a session only
if Redis counted its user a member when the message was stored.  Group
``message`` frames carry the id they were stored under, from the group's own
clock (``keys.group_clock``), and every membership starts at a position, the
group's position when it began.

**Joining** (``create``, ``join``, and each of the user's groups at login):

1. The session is parked as *pending* on the group and the gateway subscribes
   to the group's channel (so nothing published after the membership begins
   can be missed).  What arrives for a pending session is buffered, never
   written.
2. Redis decides, in one Lua script.  A refusal drops the buffer: nothing of
   the group ever reached the socket.
3. A yes returns the position, and the script publishes a hidden marker
   (``{"type":"_mark","n":<nonce of this join>}``) on the channel right after
   creating the membership.  **Redis delivers one connection's pub/sub
   messages in the order they were published, and the router receives every
   channel (group channels and this gateway's control channel) over one
   connection**, so what follows the marker was published after the
   membership existed and what precedes it, before.  Frames before the marker
   are dropped; the session becomes a member (``session.groups``,
   :attr:`GroupRelay.members`) once both the answer and the marker are in, and
   the frames after the marker are delivered.  Independently, messages are
   checked by id: nothing at or before the position is ever written.

**Leaving** stops delivery synchronously, before Redis is asked.  **Removal**
by the owner arrives on the group's own channel: the script publishes the
``removed`` event and, right after it, a hidden ``part`` notice with the
membership's span (never written to a client), after the membership is gone.
Handled synchronously in the router's callback (no task, no await), the
notice stops delivery before any later frame of that group (the channel is
ordered, and every gateway with a local member or pending join hears it); a
leave by the same user's session on another gateway is stopped the same way
by its ``left`` event.  A session taken
over elsewhere is detached from every group when the kick arrives.  After the
pub/sub connection was lost (and control messages with it), :meth:`verify`
re-reads every local membership before anything is replayed.

What a membership that ended while this gateway could not see it still owes
the session is written by :mod:`gateway.group_backlog`; group resume positions
are saved by :mod:`gateway.group_cursors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from common import keys
from common.redis import REDIS_ERRORS
from common.runtime import retrieve
from protocol import control
from protocol import frames as f
from protocol.errors import ChatError, Forbidden, NotFound
from protocol.names import group_name, id_tuple

from .group_backlog import GroupBacklog, Replayer
from .groups import Groups, GroupState
from .router import Subscriptions
from .session import Session
from .store import Replay, Store

log = logging.getLogger("chinwag.groups")

_MAX_PARKED = 10_000  # frames buffered for one pending join (a join takes one round trip)
_events = msgspec.json.Decoder(dict[str, object])
_PART_PREFIX = control.encode(control.Part(group="", user="")).partition(b",")[0] + b","

Spawn = Callable[[Awaitable[Any], str], "asyncio.Task[Any]"]
T = TypeVar("T")


class _Pending:
    """A session waiting for Redis's answer (and its marker) on one group."""

    __slots__ = ("admit", "cancelled", "frames", "marked", "marker", "unheard")

    def __init__(self, nonce: str | None) -> None:
        # No nonce (login, re-attach): no marker comes; membership was read after subscribing.
        self.marker = control.mark(nonce) if nonce else b""
        self.marked = not nonce
        self.frames: list[bytes] = []  # after the marker, in arrival order
        self.admit: tuple[str, tuple[int, int]] | None = None  # (display name, first position) once Redis said yes
        # Removed again before it took effect; a catch-up ran before Redis answered (the join writes the gap):
        self.cancelled, self.unheard = False, False


def _leaver(frame: bytes) -> str | None:
    """The user a ``left`` group_event is about (None for any other frame).  A ``removed`` event is
    always followed on the channel by a ``part`` notice (same script), which stops delivery then."""
    if b'"event":"left"' not in frame:
        return None
    try:
        event = _events.decode(frame)
    except msgspec.DecodeError:
        return None
    return str(event.get("user")) if event.get("event") == "left" else None


def _part(frame: bytes) -> control.Part | None:
    """The hidden ``part`` notice a removal publishes on the group's channel (None for any other frame)."""
    if not frame.startswith(_PART_PREFIX):
        return None
    try:
        msg = control.decode(frame)
    except msgspec.DecodeError:
        return None
    return msg if isinstance(msg, control.Part) else None


class GroupRelay:
    """Local members of each group, the group channel subscriptions, and delivery to sessions."""

    def __init__(self, router: Subscriptions, groups: Groups, spawn: Spawn, replay: Replayer | None = None) -> None:
        self.router = router
        self.groups = groups
        self._spawn = spawn
        # What memberships that ended while this gateway could not see it still owe (group_backlog.py).
        self.backlog = GroupBacklog(groups, spawn, replay)
        self.members: dict[str, set[Session]] = {}  # group key -> sessions Redis confirmed as members
        self._pending: dict[str, dict[Session, _Pending]] = {}
        self._subs: dict[str, asyncio.Future[None]] = {}  # group key -> its channel subscription
        # Joins of sessions counted members already (_stamp_rejoin), for _confirm's stale reads:
        self.join_seq, self.rejoins, self.rejoining = 0, dict[tuple[Session, str], int](), set[tuple[Session, str]]()

    # -- joining ------------------------------------------------------------

    async def join(
        self, session: Session, gkey: str, decide: Callable[[str], Awaitable[tuple[GroupState, bool]]]
    ) -> GroupState:
        """Subscribe, let Redis decide (``decide(nonce)``: the state and whether the membership is new),
        then admit.  Raises what ``decide`` raises, with nothing delivered."""
        if gkey in session.groups:  # a member here already: Redis only confirms
            _stamp_rejoin(self, session, gkey, deciding=True)
            try:
                state, new = await decide("")
                _stamp_rejoin(self, session, gkey)  # a read made while it was deciding is stale too
            except (Forbidden, NotFound):
                # Not a member after all: a removal whose notice was lost (soak seed 3001).  Stop
                # delivery, then write what that membership stored and this session has not had: the
                # catch-up that follows no longer sees the membership, so nothing else would.
                self.detach(session, gkey)
                try:
                    await self.backlog.write_ended(session, gkey)
                except REDIS_ERRORS as exc:  # the record stays in Redis; a resuming login reads it
                    log.warning("%s: could not write what %s stored before the removal (%s)", session.name,
                                gkey, type(exc).__name__)
                raise
            finally:
                self.rejoining.discard((session, gkey))
            if new and state.position is not None:
                # A removal whose notice was lost came first: what that membership stored is still owed.
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.backlog.write_ended(session, gkey)
                self._floor(session, gkey, id_tuple(state.position))
            return state
        nonce = secrets.token_hex(8)
        await self.open(session, gkey, nonce)
        try:
            state, _ = await decide(nonce)
            assert state.position is not None
            await self.backlog.cover(session, gkey, state.position, self._pending.get(gkey, {}).get(session))
        except BaseException:
            # A refusal, or no answer (the script may have run: a `join` again, "already a member", starts delivery).
            self.abandon(session, gkey)
            raise
        self.admit(session, gkey, state.name, state.position)  # new, or a member in Redis already
        return state

    async def open(self, session: Session, gkey: str, nonce: str | None) -> None:
        """Park ``session`` as pending on ``gkey`` and subscribe to the group (Redis confirmed)."""
        self._pending.setdefault(gkey, {})[session] = _Pending(nonce)
        try:
            await self._subscribe(gkey)
        except BaseException:
            self.abandon(session, gkey)
            raise

    async def open_many(self, session: Session, gkeys: list[str]) -> None:
        """Login: park ``session`` on every group and subscribe them all (no marker will come)."""
        for gkey in gkeys:
            self._pending.setdefault(gkey, {})[session] = _Pending(None)
        try:
            await asyncio.gather(*(self._subscribe(gkey) for gkey in gkeys))
        except BaseException:
            for gkey in gkeys:
                self.abandon(session, gkey)
            raise

    def admit(self, session: Session, gkey: str, name: str, position: str, *, now: bool = False) -> bool:
        """Redis said yes: a member from ``position`` on.  Delivery starts when the marker is in too,
        or at once with ``now`` (no marker will come: anything buffered is dropped, messages after
        ``position`` are in the stream for a replay).  False if a removal came first."""
        p = self._pending.get(gkey, {}).get(session)
        if p is None or p.cancelled:
            self._unpark(session, gkey)
            self._release_later(gkey)
            return False
        p.admit = (name, id_tuple(position))
        if now:
            p.frames.clear()
            p.marked = True
        if p.marked:
            self._promote(session, gkey, p)
        return True

    def abandon(self, session: Session, gkey: str) -> None:
        """Redis said no (or could not answer): forget the pending join; nothing of it was delivered."""
        self._unpark(session, gkey)
        self._release_later(gkey)

    def _promote(self, session: Session, gkey: str, p: _Pending) -> None:
        self._unpark(session, gkey)
        assert p.admit is not None
        name, position = p.admit
        session.groups[gkey] = name
        self._floor(session, gkey, position)
        self.members.setdefault(gkey, set()).add(session)
        for frame in p.frames:  # published after the membership began
            if gkey not in session.groups:
                break  # removed again within them
            if frame.startswith(f.MESSAGE_PREFIX):
                session.deliver_group(gkey, frame)
            elif not frame.startswith(_PART_PREFIX):  # another user's part (this user's cancels the join)
                self._event(session, gkey, frame, _leaver(frame))

    @staticmethod
    def _floor(session: Session, gkey: str, position: tuple[int, int]) -> None:
        # Always present once a member here (even at 0-0): a ``part`` delivers only to such a session.
        if gkey not in session.last_group or position > session.last_group[gkey]:
            session.last_group[gkey] = position

    def _unpark(self, session: Session, gkey: str) -> None:
        pending = self._pending.get(gkey)
        if pending is not None:
            pending.pop(session, None)
            if not pending:
                del self._pending[gkey]

    # -- leaving ------------------------------------------------------------

    async def leave(self, session: Session, gkey: str, decide: Callable[[], Awaitable[T]]) -> T:
        """Stop delivery, then leave in Redis (``decide``).  If Redis could not answer and the user is
        still a member, delivery resumes (messages stored meanwhile are in the stream, not replayed)."""
        name = session.groups.get(gkey)
        self.detach(session, gkey)
        try:
            return await decide()
        except REDIS_ERRORS:
            if name is not None:
                with contextlib.suppress(*REDIS_ERRORS, ChatError):
                    _, since = await self.groups.membership(session.key, [gkey])
                    if gkey in since and gkey not in session.groups:
                        await self.open(session, gkey, None)
                        self.admit(session, gkey, name, since[gkey], now=True)
            raise

    def detach(self, session: Session, gkey: str) -> None:
        """Stop delivering ``gkey`` to ``session`` now (synchronously), and cancel a pending join
        that has taken effect (one still before its marker is a newer membership than the cause)."""
        session.groups.pop(gkey, None)
        self.rejoins.pop((session, gkey), None)
        members = self.members.get(gkey)
        if members is not None:
            members.discard(session)
            if not members:
                del self.members[gkey]
        p = self._pending.get(gkey, {}).get(session)
        if p is not None and p.marked:
            p.cancelled = True
            p.frames.clear()
        self._release_later(gkey)

    def detach_all(self, session: Session) -> None:
        """The session is going (logout, takeover): no group frame reaches it from now on."""
        for gkey in list(session.groups):
            self.detach(session, gkey)
        for gkey in [g for g, pending in self._pending.items() if session in pending]:
            self._unpark(session, gkey)
            self._release_later(gkey)

    def part(
        self, ukey: str, gkey: str, sessions: dict[str, Session], since: str = "", upto: str = ""
    ) -> None:
        """A ``part`` control message: ``ukey`` is no longer a member of ``gkey``.  A removal carries
        the membership's span (``since``, ``upto``): what the group stored in it and the session has not
        had yet (live frames held during a catch-up, which are dropped now) is written before the
        session stops hearing of the group."""
        session = sessions.get(ukey)
        if session is not None:
            self._end(session, gkey, since, upto)

    def _end(self, session: Session, gkey: str, since: str, upto: str) -> None:
        self.detach(session, gkey)
        if upto and gkey in session.last_group:  # not a session that began after the removal
            self.backlog.deliver(session, gkey, since or "0-0", upto)

    # -- delivery -----------------------------------------------------------

    def _handler(self, gkey: str) -> Callable[[bytes], None]:
        def deliver(frame: bytes) -> None:
            members = self.members.get(gkey)
            if members:
                if frame.startswith(f.MESSAGE_PREFIX):
                    for session in members:  # deliver_group never changes membership
                        session.deliver_group(gkey, frame)
                elif (part := _part(frame)) is not None:
                    # A removal (published right after its ``removed`` event): stop delivery to the
                    # removed user here, and write what the membership stored that they lack.
                    for session in [s for s in members if s.key == part.user]:
                        self._end(session, gkey, part.since, part.upto)
                elif not frame.startswith(control.MARK_PREFIX):
                    leaver = _leaver(frame)
                    for session in list(members):
                        self._event(session, gkey, frame, leaver)
            pending = self._pending.get(gkey)
            if pending:
                for session, p in list(pending.items()):
                    self._park(session, gkey, p, frame)

        return deliver

    def _event(self, session: Session, gkey: str, frame: bytes, leaver: str | None) -> None:
        if session.holding:
            session.hold(frame)
        else:
            session.push(frame)
        if leaver is not None and leaver == session.name:  # this user left (elsewhere) or was removed
            self.detach(session, gkey)

    def _park(self, session: Session, gkey: str, p: _Pending, frame: bytes) -> None:
        if p.cancelled:
            return
        if not p.marked:
            if frame == p.marker:
                p.marked = True
                if p.admit is not None:
                    self._promote(session, gkey, p)
            return  # before the marker: published before the membership existed
        if frame.startswith(control.MARK_PREFIX):
            return
        part = _part(frame)
        if part is not None and part.user == session.key:  # removed before the join took effect
            p.cancelled = True
            p.frames.clear()
            return
        if len(p.frames) < _MAX_PARKED:
            p.frames.append(frame)
        elif len(p.frames) == _MAX_PARKED:
            log.warning("%s: more than %d frames of %s arrived during one join; dropping", session.name,
                        _MAX_PARKED, gkey)

    # -- subscriptions ------------------------------------------------------

    def _in_use(self, gkey: str) -> bool:
        return bool(self.members.get(gkey)) or bool(self._pending.get(gkey))

    async def _subscribe(self, gkey: str) -> None:
        sub = self._subs.get(gkey)
        if sub is None:
            sub = asyncio.ensure_future(self.router.subscribe(keys.group_channel(gkey), self._handler(gkey)))
            sub.add_done_callback(retrieve)
            self._subs[gkey] = sub
        try:
            await asyncio.shield(sub)
        except BaseException:
            if self._subs.get(gkey) is sub and sub.done():
                del self._subs[gkey]
            raise

    def _release_later(self, gkey: str) -> None:
        if not self._in_use(gkey) and gkey in self._subs:
            self._spawn(self._release(gkey), "group-unsubscribe")

    async def _release(self, gkey: str) -> None:
        """Unsubscribe a group nobody here needs (checked again once any subscribe in flight is done)."""
        sub = self._subs.get(gkey)
        if sub is None:
            return
        if not sub.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(sub)
        if self._in_use(gkey) or self._subs.get(gkey) is not sub:
            return
        del self._subs[gkey]
        await self.router.unsubscribe(keys.group_channel(gkey))  # no await inside: atomic with the check

    # -- after the pub/sub connection was lost ------------------------------

    async def verify(self) -> dict[tuple[Session, str], tuple[int, int]]:
        """Markers and ``part`` notices published while the subscriptions were down are gone: pending joins stop
        waiting for a marker (messages stay checked by id; one Redis has not answered yet is no member here, so
        its join writes what it missed: backlog.cover), and every local membership is read again from Redis.
        Sessions no longer members stop receiving; a membership that began again meanwhile (removed, then back)
        starts at its new position.  Returns, per (session, group), the group's position when that membership
        was read (each group has its own clock): a catch-up replay must stop there (later ones arrive live)."""
        for gkey, pending in list(self._pending.items()):
            for session, p in list(pending.items()):
                p.marked, p.unheard = True, p.admit is None
                if p.admit is not None:
                    self._promote(session, gkey, p)
        by_session: dict[Session, list[str]] = {}
        for gkey, members in self.members.items():
            for session in members:
                by_session.setdefault(session, []).append(gkey)
        bounds: dict[tuple[Session, str], tuple[int, int]] = {}
        for session, gkeys in by_session.items():
            await _confirm(self, session, gkeys, bounds)
        return bounds


def _stamp_rejoin(relay: GroupRelay, session: Session, gkey: str, deciding: bool = False) -> None:
    """A join of a session counted a member starts (``deciding``) or ends: _confirm's earlier read is stale."""
    if gkey in session.groups:  # detach drops the stamp
        relay.join_seq += 1
        relay.rejoins[session, gkey] = relay.join_seq
        relay.rejoining.update([(session, gkey)] if deciding else [])


async def _confirm(
    relay: GroupRelay, session: Session, gkeys: list[str], bounds: dict[tuple[Session, str], tuple[int, int]]
) -> None:
    """``verify`` for one session: read its memberships of ``gkeys`` again and act on the answer.  A join
    not ended before the read decides that membership itself (a refusal detaches): soak seed 5201."""
    seq = relay.join_seq
    views = await relay.groups.views(session.key, gkeys)
    for gkey, view in views.items():
        bounds[session, gkey] = id_tuple(view.now)
    gone = [g for g in gkeys if g in session.groups and views[g].since is None]  # not detached meanwhile
    # Read before detaching (an error here leaves the membership for the retried catch-up).
    parted = await relay.groups.parted(session.key, gone) if gone else {}
    for gkey in gkeys:
        if gkey not in session.groups:
            continue  # detached while we waited
        since = views[gkey].since
        if since is None and ((session, gkey) in relay.rejoining or relay.rejoins.get((session, gkey), 0) > seq):
            continue  # stale: a join began or ended since the read, and its answer governs
        if since is None:
            log.info("%s is no longer in %s; delivery stopped", session.name, gkey)
            relay.detach(session, gkey)
            if gkey in parted:  # removed by the owner while the notice could not reach us
                relay.backlog.deliver(session, gkey, *parted[gkey])
        else:
            if id_tuple(since) > session.last_group.get(gkey, (0, 0)):
                await relay.backlog.write_ended(session, gkey)  # removed (or left) and back meanwhile?
            relay._floor(session, gkey, id_tuple(since))


async def join_groups_at_login(
    relay: GroupRelay, groups: Groups, store: Store, session: Session, resume: dict[str, str]
) -> dict[str, tuple[str, str, Replay, bool]]:
    """Subscribe to each of the user's groups, confirm the memberships, then read each stream.

    Returns ``"#Name" -> (group key, start id, replay, resumed)``.  A group
    starts at the client's resume point, else where this user's sessions
    stopped reading it (saved as it advances), else now (nothing old is
    pushed to a fresh member); never before the membership began.  The
    memberships are read after subscribing, each in one step with its
    group's position, so a removal in between is seen either there or as a
    ``part`` that cancels the pending one.  The user's set of groups may name
    groups that no longer list them (gateway/groups.py: the set is written
    before the group decides, and trimmed here): those are repaired and skipped.
    """
    mine = await groups.keys_of_user(session.key)
    if not mine:
        return {}
    wanted = {group_name(stream)[1]: pos for stream, pos in resume.items() if stream.startswith("#")}
    cursors = await groups.cursors(session.key)
    await relay.open_many(session, mine)
    try:
        views = await groups.views(session.key, mine)
    except BaseException:
        relay.detach_all(session)
        raise
    out: dict[str, tuple[str, str, Replay, bool]] = {}
    for gkey in mine:
        view = views[gkey]
        if view.since is None:  # left or removed (maybe meanwhile), or a join that never took effect
            relay.abandon(session, gkey)
            await groups.repair(session.key, gkey, view)
            continue
        start = max(wanted.get(gkey) or cursors.get(gkey) or view.now, view.since, key=id_tuple)
        if not relay.admit(session, gkey, view.name, start):  # live frames from now on, held
            continue
        replay = await store.replay(keys.group_stream(gkey), start)
        # Up to the group's position then: the membership held then; anything later came (or comes)
        # live, where a removal in between is seen in order.
        upto = id_tuple(view.now)
        frames = [(rid, data) for rid, data in replay.frames if id_tuple(rid) <= upto]
        out[f"#{view.name}"] = (gkey, start, Replay(frames, replay.recovered), gkey in wanted)
    return out
