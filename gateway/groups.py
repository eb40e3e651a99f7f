"""Group chat state in Redis: membership decided in the group's slot, the user's side written after.

A group is a hash (name, owner, invite_only), a hash of members (key ->
display name), a set of invited users, the join order (a zset: the member who
joined longest ago inherits ownership, always the same one), each member's
``since`` (the group's position when the membership began: nothing at or
before it is ever delivered to them, see :mod:`gateway.group_relay`) and the
span of each membership that ended (``group_ended``).  The group's position is
its own id clock (``keys.group_clock``, the last id ``send_group`` handed out).
All of that carries the group's hash tag and is changed by one Lua script per
operation (:mod:`gateway.group_scripts`), which also publishes the change on the
group's channel, in the same slot (members see ``group_event`` frames; a
removal is followed by a hidden ``part`` notice with the membership's span).
Two users creating one group race inside that script: exactly one is owner.

Per user, in the user's slot, are the set of their groups, their saved
positions (cursors), the span of their last ended membership per group
(``parted``) and their pending invitations.  A Redis Cluster runs no script
across two slots, so **each operation is two or three single-slot steps**,
ordered so that a crash between any two leaves a state the next reader repairs:

* **join / create**: (0) add the group to the user's set, (1) the group's script
  decides and makes the membership, (2) add it again and drop the pending
  invitation.  The user's set is therefore a *superset* of their memberships:
  it may name a group whose step 1 never ran or refused, or that they left.
  Every reader asks the group's slot (``of_user`` lists only confirmed groups),
  and login prunes the set (:meth:`Groups.repair`).  A crash after step 1 and
  before step 2 loses nothing: step 0 already put the group in the set, and a
  stale invitation is dropped at login because the group's step removed the
  user from its invited set.  (Adding to the set *after* the decision alone,
  as docs/cluster.md first planned, could not be repaired: login cannot find a
  group missing from the set.)
* **leave / remove**: (1) the group's script ends the membership and records
  its span in ``group_ended``, (2) the user's ``parted`` record gets that span,
  their cursor for the group is dropped (unless it is beyond the span: a later
  membership's), and a pending invitation goes.  A crash between the steps is
  repaired at login (the group no longer lists the user: step 2 runs with the
  span the group kept) and meanwhile :meth:`Groups.parted` reads both records.
  The set is not trimmed in step 2, which could race with a quick rejoin's
  step 0; login trims it.
* **invite**: (1) the group's script checks the owner and adds the invitee to
  the invited set, (2) the invitation is stored in the invitee's slot and
  published on their own channel (a non-member's gateway does not hear the
  group's channel).  A crash between the steps leaves the owner without an
  answer; the owner's retry is idempotent.  The invitee can join either way.
* **uninvite / deleted group**: (1) the group forgets the invitee, (2) the
  invitation is dropped; one left behind by a crash is dropped at login, where
  every pending invitation is checked against its group's invited set.

The group's slot stays the authority for who is a member, as
``group_relay.verify`` already treats it: membership is always decided there
before any delivery, and a non-member never receives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from common.redis import publish_command
from protocol.errors import Forbidden, GroupExists, NotFound, NotMember
from protocol.names import id_tuple

from . import group_scripts as lua


@dataclass(frozen=True, slots=True)
class Left:
    """A leave's answer: whether the group, now empty, is gone, and the membership's span (ids)."""

    deleted: bool
    since: str
    upto: str


@dataclass(frozen=True, slots=True)
class GroupState:
    key: str
    name: str
    owner: str  # display name
    invite_only: bool
    members: list[str]  # display names, sorted (empty when the caller may not see them)
    position: str | None = None  # on create/join: the group stream's position at that moment


@dataclass(frozen=True, slots=True)
class View:
    """One group as one user sees it, read in one step in the group's slot."""

    now: str  # the group's position (its clock)
    since: str | None  # where the user's membership began; None: not a member
    name: str  # '' if there is no such group
    owner: str
    invite_only: bool
    ended: tuple[str, str] | None  # the span of the user's last ended membership, as the group kept it


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _span(value: Any) -> tuple[str, str] | None:
    if not value:
        return None
    since, _, upto = _s(value).partition(" ")
    return since, upto


class Groups:
    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis: Any = redis
        self._publish = publish_command(redis)
        self._cluster = isinstance(redis, RedisCluster)
        self._create = redis.register_script(lua.CREATE)
        self._join = redis.register_script(lua.JOIN)
        self._leave = redis.register_script(lua.LEAVE)
        self._owner_op = redis.register_script(lua.OWNER_OP)
        self._view = redis.register_script(lua.VIEW)
        self._adopt = redis.register_script(lua.ADOPT)
        self._part_user = redis.register_script(lua.PART_USER)
        self._invite_user = redis.register_script(lua.INVITE_USER)
        self._save_cursors = redis.register_script(lua.SAVE_CURSORS)

    async def _in_group(self, script: Any, gkey: str, *args: Any) -> Any:
        return await script(keys=lua.group_keys(gkey), args=[self._publish, keys.group_channel(gkey), gkey, *args])

    async def _many(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One script per (keys, args), in one pipelined round trip (per node on a cluster, where
        redis-py refuses EVALSHA in a pipeline: the script's text goes with EVAL instead)."""
        if not calls:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for k, a in calls:
                await self._queue(pipe, script, k, a)
            return list(await pipe.execute())

    async def _queue(self, pipe: Any, script: Any, k: list[str], a: list[Any]) -> None:
        if self._cluster:
            pipe.eval(script.script, len(k), *k, *a)
        else:
            await script(keys=k, args=a, client=pipe)

    async def _adopted(self, gkey: str, ukey: str) -> None:
        await self._adopt(keys=[keys.user_groups(ukey), keys.invitations(ukey)], args=[gkey])

    async def _parted_user(self, gkey: str, ukey: str, since: str, upto: str) -> None:
        await self._part_user(
            keys=[keys.group_cursors(ukey), keys.group_parted(ukey), keys.invitations(ukey)],
            args=[gkey, f"{since} {upto}" if upto else "", keys.PARTED_TTL],
        )

    async def create(
        self, gkey: str, name: str, ukey: str, uname: str, invite_only: bool, nonce: str = ""
    ) -> GroupState:
        """Create with ``ukey`` as owner; ``nonce``, if given, is published as a marker on the channel."""
        await self.redis.sadd(keys.user_groups(ukey), gkey)  # step 0 (see the module docstring)
        result = await self._in_group(self._create, gkey, name, ukey, uname, "1" if invite_only else "0", nonce)
        if not int(result[0]):
            raise GroupExists(f"#{name} exists already")
        await self._adopted(gkey, ukey)
        return GroupState(gkey, name, uname, invite_only, [uname], _s(result[1]))

    async def join(self, gkey: str, ukey: str, uname: str, nonce: str = "") -> tuple[GroupState, bool]:
        """Join; the state and whether the membership is new (False: already a member).  The marker
        (``nonce``) is published in both cases."""
        await self.redis.sadd(keys.user_groups(ukey), gkey)  # step 0
        result = await self._in_group(self._join, gkey, ukey, uname, nonce)
        status = int(result[0])
        if status == -1:
            raise NotFound("no such group")
        if status == 0:
            raise Forbidden("that group is invite-only: its owner must invite you first")
        await self._adopted(gkey, ukey)
        state = await self.state(gkey, ukey)
        joined = GroupState(state.key, state.name, state.owner, state.invite_only, state.members, _s(result[1]))
        return joined, status == 1

    async def leave(self, gkey: str, ukey: str, uname: str) -> Left:
        """Leave; says whether the group, now empty, was deleted, and the span of the membership."""
        result = await self._in_group(self._leave, gkey, ukey, uname, keys.PARTED_TTL)
        status = int(result[0])
        if status == 0:
            raise NotMember()
        upto, since = _s(result[1]), _s(result[2])
        await self._parted_user(gkey, ukey, since, upto)
        if status == 2:
            await self._drop_invitations(gkey, [_s(invitee) for invitee in result[3:]])
        return Left(status == 2, since, upto)

    async def _drop_invitations(self, gkey: str, invitees: list[str]) -> None:
        if invitees:
            async with self.redis.pipeline(transaction=False) as pipe:
                for invitee in invitees:
                    pipe.hdel(keys.invitations(invitee), gkey)
                await pipe.execute()

    async def owner_op(
        self, op: str, gkey: str, actor: str, actor_name: str, target: str = "", target_name: str = "",
        invite_only: bool = False,
    ) -> GroupState:
        result = await self._in_group(self._owner_op, gkey, op, actor, actor_name, target, target_name,
                                      "1" if invite_only else "0", keys.PARTED_TTL)
        status = int(result[0])
        if status == -1:
            raise NotFound("no such group")
        if status == -2:
            raise Forbidden("only the group's owner can do that (and not to themselves)")
        if op == "invite" and status == 1:
            await self._invite_user(keys=[keys.invitations(target)],
                                    args=[gkey, result[1], self._publish, keys.user_channel(target)])
        elif op == "remove" and status == 3:
            await self._parted_user(gkey, target, _s(result[1]), _s(result[2]))
        elif op == "remove":
            await self.redis.hdel(keys.invitations(target), gkey)
        return await self.state(gkey, actor)

    async def state(self, gkey: str, ukey: str) -> GroupState:
        """The group as a member sees it; NotMember for anyone else."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.group(gkey), "name", "owner_name", "invite_only")
            pipe.hgetall(keys.group_members(gkey))
            info, members = await pipe.execute()
        if info[0] is None:
            raise NotFound("no such group")
        names = {_s(k): _s(v) for k, v in members.items()}
        if ukey not in names:
            raise NotMember()
        return GroupState(gkey, _s(info[0]), _s(info[1]), _s(info[2]) == "1", sorted(names.values()))

    async def is_member(self, gkey: str, ukey: str) -> bool:
        return bool(await self.redis.hexists(keys.group_members(gkey), ukey))

    async def views(self, ukey: str, gkeys: list[str]) -> dict[str, View]:
        """Each of ``gkeys`` as ``ukey`` sees it, each read atomically in its own group's slot."""
        raw = await self._many(self._view, [(lua.group_keys(g), [ukey]) for g in gkeys])
        return {
            gkey: View(_s(r[0]), _s(r[1]) or None, _s(r[2]), _s(r[3]), _s(r[4]) == "1", _span(r[5]))
            for gkey, r in zip(gkeys, raw, strict=True)
        }

    async def membership(self, ukey: str, gkeys: list[str]) -> tuple[str, dict[str, str]]:
        """For ONE group (``gkeys`` = [gkey]), read in one step: the group's position now, and where the
        user's membership started if they are a member (nothing at or before it is theirs to receive).
        Positions of different groups come from different clocks: read several with :meth:`views`."""
        if len(gkeys) != 1:
            raise ValueError("membership() reads one group; use views() for several")
        view = (await self.views(ukey, gkeys))[gkeys[0]]
        return view.now, ({gkeys[0]: view.since} if view.since is not None else {})

    async def parted(self, ukey: str, gkeys: list[str]) -> dict[str, tuple[str, str]]:
        """For each of ``gkeys`` ``ukey`` was removed from or left: (since, upto), the group's positions
        when that last membership began and when it ended.  The user's record is written in a second
        step, so the group's own record of the span is read too, and the later of the two wins."""
        if not gkeys:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for gkey in gkeys:
                pipe.hget(keys.group_parted(ukey), gkey)
                pipe.hget(keys.group_ended(gkey), ukey)
            raw = await pipe.execute()
        out = {}
        for i, gkey in enumerate(gkeys):
            spans = [s for s in (_span(raw[2 * i]), _span(raw[2 * i + 1])) if s is not None]
            if spans:
                out[gkey] = max(spans, key=lambda s: id_tuple(s[1]))
        return out

    async def keys_of_user(self, ukey: str) -> list[str]:
        """The user's set of groups: every group they are in, and maybe some they no longer are."""
        return sorted(_s(g) for g in await self.redis.smembers(keys.user_groups(ukey)))

    async def of_user(self, ukey: str) -> list[GroupState]:
        """Every group ``ukey`` is in, as the groups' slots say (members not listed)."""
        views = await self.views(ukey, await self.keys_of_user(ukey))
        return [GroupState(gkey, v.name, v.owner, v.invite_only, []) for gkey, v in views.items()
                if v.since is not None]

    async def repair(self, ukey: str, gkey: str, view: View) -> None:
        """Login, for a group in the user's set that does not list them: finish the user's side of an
        ended membership whose second step a crash cut off, then drop the group from the set."""
        if view.ended is not None:
            await self._parted_user(gkey, ukey, *view.ended)
        await self.redis.srem(keys.user_groups(ukey), gkey)

    async def invitations(self, ukey: str) -> list[bytes]:
        """The ``invited`` group_event frames of every invitation still pending for ``ukey`` (dropping
        any whose group no longer lists the user as invited: the group's slot decides)."""
        pending = {_s(k): v for k, v in (await self.redis.hgetall(keys.invitations(ukey))).items()}
        if not pending:
            return []
        gkeys = sorted(pending)
        async with self.redis.pipeline(transaction=False) as pipe:
            for gkey in gkeys:
                pipe.sismember(keys.group_invited(gkey), ukey)
            invited = await pipe.execute()
        stale = [g for g, yes in zip(gkeys, invited, strict=True) if not yes]
        if stale:
            await self.redis.hdel(keys.invitations(ukey), *stale)
        return [v if isinstance(v, bytes) else str(v).encode()
                for g, v in sorted(pending.items()) if g not in stale]

    async def cursors(self, ukey: str) -> dict[str, str]:
        raw = await self.redis.hgetall(keys.group_cursors(ukey))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def save_cursors(self, ukey: str, cursors: dict[str, str], client: Any = None) -> None:
        """Move each cursor forward to the given id (never back); ``client`` may be a pipeline."""
        if cursors:
            args = [x for item in cursors.items() for x in item]
            if client is None:
                await self._save_cursors(keys=[keys.group_cursors(ukey)], args=args)
            else:
                await self._queue(client, self._save_cursors, [keys.group_cursors(ukey)], args)
