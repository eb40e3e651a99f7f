"""Group chat state in Redis: every membership change is one Lua script.

A group is a hash (name, owner, invite_only), a hash of members (key ->
display name), a set of invited users, and, per user, the set of groups they
are in, so any gateway can answer "is alice in #devs?" in one O(1) call.
Each membership also records when it began: its place in the join order (a
zset, so the member who joined longest ago inherits ownership, always the
same one) and the message id current at that moment (nothing at or before it
is ever delivered to that member, see :mod:`gateway.group_relay`).  Pending
invitations are kept per invitee too, so one made while they were offline
reaches them at their next login.  Scripts publish the change on the group's channel in the same atomic step
(members see ``group_event`` frames), and tell the gateway holding a user who
was invited or removed through that gateway's control channel.  Two users
creating one group race inside Redis: exactly one becomes its owner.

Like presence, the scripts compute keys from a prefix, so they need a single
Redis rather than Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from common.lua_json import Const, IfSet, Raw, Text, json_expr
from protocol import control
from protocol import frames as f
from protocol.errors import Forbidden, GroupExists, NotFound, NotMember

# Builds a group_event frame in `ev` from: event name, user display name, by (or '').
# Frames from their Structs (common/lua_json.py), keys from common/keys.py.
_EVENT = keys.lua_functions(keys.session, keys.gateway_channel) + """
local function event(gname, what, user, by)
  return """ + json_expr(f.GroupEvent, group=Text("gname"), event=Text("what"), user=Text("user"),
                         by=IfSet(Text("by"))) + """
end
local function control(prefix, ukey, body)
  local gw = redis.call('HGET', key_session(prefix, ukey), 'gw')
  if gw then
    redis.call('PUBLISH', key_gateway_channel(prefix, gw), body)
  end
end
local function part(prefix, gkey, ukey, since, upto)
  control(prefix, ukey, """ + json_expr(control.Part, group=Text("gkey"), user=Text("ukey"),
                                        since=IfSet(Text("since")), upto=IfSet(Text("upto"))) + """)
end
"""

# Hidden marker a gateway waits for on the group's channel (never sent to clients): published right
# after a membership is created, so a frame after it on the channel is after the membership (§ group_relay).
_MARK = """
local function mark(channel, nonce)
  if nonce ~= '' then
    redis.call('PUBLISH', channel, """ + json_expr(control.Mark, n=Text("nonce")) + """)
  end
end
"""

# Adds a member at the end of the join order, remembering the position their membership starts at.
# KEYS as for _CREATE/_JOIN: [1] group, [2] members, then order and since (passed as arguments).
_ADD = """
local function add_member(group, members, order, since, ukey, uname, position)
  redis.call('HSET', members, ukey, uname)
  redis.call('ZADD', order, redis.call('HINCRBY', group, 'seq', 1), ukey)
  redis.call('HSET', since, ukey, position)
end
"""

# Deletes an empty group with everything it had, including its invitees' pending invitations.
_DROP = keys.lua_functions(keys.invitations) + """
local function drop_group(prefix, gkey, group, members, invited, stream, order, since)
  for _, invitee in ipairs(redis.call('SMEMBERS', invited)) do
    redis.call('HDEL', key_invitations(prefix, invitee), gkey)
  end
  redis.call('DEL', group, members, invited, stream, order, since)
end
"""

# KEYS: group, members, user groups, lastid, order, since
# ARGV: gkey, group name, ukey, user name, invite_only ('0'|'1'), channel, marker nonce
# -> {0} exists | {1, position}: the newest message id now, where the new member's reading starts
_CREATE = _MARK + _ADD + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end
local position = redis.call('GET', KEYS[4]) or '0-0'
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'owner', ARGV[3], 'owner_name', ARGV[4], 'invite_only', ARGV[5])
add_member(KEYS[1], KEYS[2], KEYS[5], KEYS[6], ARGV[3], ARGV[4], position)
redis.call('SADD', KEYS[3], ARGV[1])
mark(ARGV[6], ARGV[7])
return {1, position}
"""

# KEYS: group, members, invited, user groups, lastid, order, since, user's invitations
# ARGV: gkey, ukey, user name, channel, marker nonce
# -> {-1} no group | {0} invite-only and not invited | {1, position} joined | {2, position} already a member
_JOIN = _EVENT + _MARK + _ADD + """
local g = redis.call('HMGET', KEYS[1], 'name', 'invite_only')
if not g[1] then
  return {-1}
end
local position = redis.call('GET', KEYS[5]) or '0-0'
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  mark(ARGV[4], ARGV[5])
  return {2, position}
end
if g[2] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 0 then
  return {0}
end
add_member(KEYS[1], KEYS[2], KEYS[6], KEYS[7], ARGV[2], ARGV[3], position)
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
mark(ARGV[4], ARGV[5])
redis.call('PUBLISH', ARGV[4], event(g[1], 'joined', ARGV[3], ''))
return {1, position}
"""

# KEYS: group, members, invited, user groups, stream, order, since, lastid, user's cursors
# ARGV: gkey, ukey, user name, channel, prefix, seconds the membership's span is kept
# -> {0} not a member | {1, position, since} left | {2, position, since} left and the group, now empty, is gone
# (position: the newest id at the leave, where the membership ends; since: where it began).
# The member who joined longest ago becomes owner when the owner leaves (members of a group made before
# join order was recorded come after, by key).
_LEAVE = _EVENT + _DROP + keys.lua_functions(keys.group_parted) + """
local g = redis.call('HMGET', KEYS[1], 'name', 'owner')
if not g[1] or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  return {0}
end
local position = redis.call('GET', KEYS[8]) or '0-0'
local since = redis.call('HGET', KEYS[7], ARGV[2]) or '0-0'
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[6], ARGV[2])
redis.call('HDEL', KEYS[7], ARGV[2])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[9], ARGV[1])
local parted = key_group_parted(ARGV[5], ARGV[2])
redis.call('HSET', parted, ARGV[1], since .. ' ' .. position)
redis.call('EXPIRE', parted, tonumber(ARGV[6]))
redis.call('PUBLISH', ARGV[4], event(g[1], 'left', ARGV[3], ''))
part(ARGV[5], ARGV[1], ARGV[2], '', '')
if g[2] == ARGV[2] then
  if redis.call('HLEN', KEYS[2]) == 0 then
    drop_group(ARGV[5], ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
    return {2, position, since}
  end
  local heir = redis.call('ZRANGE', KEYS[6], 0, 0)[1]
  if not heir then
    local rest = redis.call('HKEYS', KEYS[2])
    table.sort(rest)
    heir = rest[1]
  end
  local heir_name = redis.call('HGET', KEYS[2], heir)
  redis.call('HSET', KEYS[1], 'owner', heir, 'owner_name', heir_name)
  redis.call('PUBLISH', ARGV[4], event(g[1], 'owner', heir_name, ''))
end
return {1, position, since}
"""

# KEYS: group, members, invited, target's groups, order, since, lastid
# ARGV: op ('invite'|'remove'|'set'), actor key, actor name, target key, target name, channel, prefix, gkey, flag,
#       seconds a removal's record is kept
# -> -1 no group | -2 not the owner | 0 nothing to do | 1 done
_OWNER_OP = _EVENT + keys.lua_functions(keys.invitations, keys.group_cursors, keys.group_parted) + """
local g = redis.call('HMGET', KEYS[1], 'name', 'owner')
if not g[1] then
  return -1
end
if g[2] ~= ARGV[2] then
  return -2
end
local op = ARGV[1]
if op == 'set' then
  redis.call('HSET', KEYS[1], 'invite_only', ARGV[9])
  local ev = """ + json_expr(f.GroupEvent, group=Text("g[1]"), event=Const("updated"), user=Text("ARGV[3]"),
                             invite_only=Raw("(ARGV[9] == '1' and 'true' or 'false')")) + """
  redis.call('PUBLISH', ARGV[6], ev)
  return 1
end
if ARGV[4] == ARGV[2] then
  return -2
end
local pending = key_invitations(ARGV[7], ARGV[4])
if op == 'invite' then
  if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
    return 0
  end
  redis.call('SADD', KEYS[3], ARGV[4])
  local ev = event(g[1], 'invited', ARGV[5], ARGV[3])
  redis.call('HSET', pending, ARGV[8], ev)
  redis.call('PUBLISH', ARGV[6], ev)
  control(ARGV[7], ARGV[4], """ + json_expr(control.Notify, user=Text("ARGV[4]"), frame=Raw("ev")) + """)
  return 1
end
-- remove: a member loses membership, an invitee loses the invitation
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('HDEL', pending, ARGV[8])
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then
  return 0
end
-- The membership ends at the newest id now: the member is owed everything stored up to it.  Recorded
-- (and carried on the part notice) so a gateway that missed the notice can still deliver it.
local since = redis.call('HGET', KEYS[6], ARGV[4]) or '0-0'
local upto = redis.call('GET', KEYS[7]) or '0-0'
local ev = event(g[1], 'removed', ARGV[5], ARGV[3])
redis.call('PUBLISH', ARGV[6], ev)
redis.call('HDEL', KEYS[2], ARGV[4])
redis.call('ZREM', KEYS[5], ARGV[4])
redis.call('HDEL', KEYS[6], ARGV[4])
redis.call('SREM', KEYS[4], ARGV[8])
redis.call('HDEL', key_group_cursors(ARGV[7], ARGV[4]), ARGV[8])
local parted = key_group_parted(ARGV[7], ARGV[4])
redis.call('HSET', parted, ARGV[8], since .. ' ' .. upto)
redis.call('EXPIRE', parted, tonumber(ARGV[10]))
part(ARGV[7], ARGV[8], ARGV[4], since, upto)
return 1
"""

# KEYS: lastid ; ARGV: prefix, ukey, gkey... -> {now, since or '' per gkey}: where each of the user's
# memberships began ('' when not a member), read in one step with the newest id.
_MEMBERSHIP = keys.lua_functions(keys.group_members, keys.group_since) + """
local out = {redis.call('GET', KEYS[1]) or '0-0'}
for i = 3, #ARGV do
  if redis.call('HEXISTS', key_group_members(ARGV[1], ARGV[i]), ARGV[2]) == 1 then
    out[#out + 1] = redis.call('HGET', key_group_since(ARGV[1], ARGV[i]), ARGV[2]) or '0-0'
  else
    out[#out + 1] = ''
  end
end
return out
"""

# KEYS: user's cursors ; ARGV: gkey, id, gkey, id, ... -- each cursor only ever moves forward, so a
# late flush of an older session never sends a newer one back.
_SAVE_CURSORS = """
local function newer(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or newer(ARGV[i + 1], cur) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""

# KEYS: user's invitations ; ARGV: prefix, ukey -> the pending invitation frames (dropping any whose
# group no longer lists the user as invited).
_INVITATIONS = keys.lua_functions(keys.group_invited) + """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if redis.call('SISMEMBER', key_group_invited(ARGV[1], all[i]), ARGV[2]) == 1 then
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"""

# KEYS: user groups ; ARGV: prefix -> flat list of gkey, name, owner name, invite_only
_LIST = keys.lua_functions(keys.group) + """
local out = {}
for _, gkey in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local g = redis.call('HMGET', key_group(ARGV[1], gkey), 'name', 'owner_name', 'invite_only')
  if g[1] then
    out[#out + 1] = gkey
    out[#out + 1] = g[1]
    out[#out + 1] = g[2]
    out[#out + 1] = g[3]
  end
end
return out
"""


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


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Groups:
    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis
        self._create = redis.register_script(_CREATE)
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._owner_op = redis.register_script(_OWNER_OP)
        self._list = redis.register_script(_LIST)
        self._membership = redis.register_script(_MEMBERSHIP)
        self._save_cursors = redis.register_script(_SAVE_CURSORS)
        self._invitations = redis.register_script(_INVITATIONS)

    async def create(
        self, gkey: str, name: str, ukey: str, uname: str, invite_only: bool, nonce: str = ""
    ) -> GroupState:
        """Create with ``ukey`` as owner; ``nonce``, if given, is published as a marker on the channel."""
        result = await self._create(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.user_groups(ukey), keys.LAST_ID,
                  keys.group_order(gkey), keys.group_since(gkey)],
            args=[gkey, name, ukey, uname, "1" if invite_only else "0", keys.group_channel(gkey), nonce],
        )
        if not int(result[0]):
            raise GroupExists(f"#{name} exists already")
        return GroupState(gkey, name, uname, invite_only, [uname], _s(result[1]))

    async def join(self, gkey: str, ukey: str, uname: str, nonce: str = "") -> tuple[GroupState, bool]:
        """Join; the state and whether the membership is new (False: already a member).  The marker
        (``nonce``) is published in both cases."""
        result = await self._join(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.group_invited(gkey), keys.user_groups(ukey),
                  keys.LAST_ID, keys.group_order(gkey), keys.group_since(gkey), keys.invitations(ukey)],
            args=[gkey, ukey, uname, keys.group_channel(gkey), nonce],
        )
        status = int(result[0])
        if status == -1:
            raise NotFound("no such group")
        if status == 0:
            raise Forbidden("that group is invite-only: its owner must invite you first")
        state = await self.state(gkey, ukey)
        joined = GroupState(state.key, state.name, state.owner, state.invite_only, state.members, _s(result[1]))
        return joined, status == 1

    async def leave(self, gkey: str, ukey: str, uname: str) -> Left:
        """Leave; says whether the group, now empty, was deleted, and the span of the membership."""
        result = await self._leave(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.group_invited(gkey), keys.user_groups(ukey),
                  keys.group_stream(gkey), keys.group_order(gkey), keys.group_since(gkey), keys.LAST_ID,
                  keys.group_cursors(ukey)],
            args=[gkey, ukey, uname, keys.group_channel(gkey), keys.PREFIX, keys.PARTED_TTL],
        )
        status = int(result[0])
        if status == 0:
            raise NotMember()
        return Left(status == 2, _s(result[2]), _s(result[1]))

    async def owner_op(
        self, op: str, gkey: str, actor: str, actor_name: str, target: str = "", target_name: str = "",
        invite_only: bool = False,
    ) -> GroupState:
        status = int(await self._owner_op(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.group_invited(gkey), keys.user_groups(target),
                  keys.group_order(gkey), keys.group_since(gkey), keys.LAST_ID],
            args=[op, actor, actor_name, target, target_name, keys.group_channel(gkey), keys.PREFIX, gkey,
                  "1" if invite_only else "0", keys.PARTED_TTL],
        ))
        if status == -1:
            raise NotFound("no such group")
        if status == -2:
            raise Forbidden("only the group's owner can do that (and not to themselves)")
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

    async def membership(self, ukey: str, gkeys: list[str]) -> tuple[str, dict[str, str]]:
        """In one atomic read: the newest message id, and for each of ``gkeys`` the user is a member of,
        the position their membership started at (nothing at or before it is theirs to receive)."""
        result = await self._membership(keys=[keys.LAST_ID], args=[keys.PREFIX, ukey, *gkeys])
        since = {gkey: _s(pos) for gkey, pos in zip(gkeys, result[1:], strict=True) if _s(pos)}
        return _s(result[0]), since

    async def parted(self, ukey: str, gkeys: list[str]) -> dict[str, tuple[str, str]]:
        """For each of ``gkeys`` ``ukey`` was removed from or left: (since, upto), the ids current when
        that last membership began and when it ended."""
        raw = await self.redis.hmget(keys.group_parted(ukey), gkeys)
        out = {}
        for gkey, value in zip(gkeys, raw, strict=True):
            if value:
                since, _, upto = _s(value).partition(" ")
                out[gkey] = (since, upto)
        return out

    async def of_user(self, ukey: str) -> list[GroupState]:
        """Every group ``ukey`` is in (members not listed)."""
        flat = await self._list(keys=[keys.user_groups(ukey)], args=[keys.PREFIX])
        out = []
        for i in range(0, len(flat), 4):
            out.append(GroupState(_s(flat[i]), _s(flat[i + 1]), _s(flat[i + 2]), _s(flat[i + 3]) == "1", []))
        return sorted(out, key=lambda g: g.key)

    async def invitations(self, ukey: str) -> list[bytes]:
        """The ``invited`` group_event frames of every invitation still pending for ``ukey``."""
        frames = await self._invitations(keys=[keys.invitations(ukey)], args=[keys.PREFIX, ukey])
        return [f if isinstance(f, bytes) else str(f).encode() for f in frames]

    async def cursors(self, ukey: str) -> dict[str, str]:
        raw = await self.redis.hgetall(keys.group_cursors(ukey))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def save_cursors(self, ukey: str, cursors: dict[str, str], client: Any = None) -> None:
        """Move each cursor forward to the given id (never back); ``client`` may be a pipeline."""
        if cursors:
            args = [x for item in cursors.items() for x in item]
            await self._save_cursors(keys=[keys.group_cursors(ukey)], args=args, client=client)
