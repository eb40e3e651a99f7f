"""Group chat state in Redis: every membership change is one Lua script.

A group is a hash (name, owner, invite_only), a hash of members (key ->
display name), a set of invited users, and, per user, the set of groups they
are in, so any gateway can answer "is alice in #devs?" in one O(1) call.
Scripts publish the change on the group's channel in the same atomic step
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

from chinwag import keys
from protocol.errors import Forbidden, GroupExists, NotFound, NotMember

# Builds a group_event frame in `ev` from: event name, user display name, by (or '').
_EVENT = """
local function event(gname, what, user, by)
  local out = '{"type":"group_event","group":"' .. gname .. '","event":"' .. what .. '","user":"' .. user .. '"'
  if by ~= '' then
    out = out .. ',"by":"' .. by .. '"'
  end
  return out .. '}'
end
local function control(prefix, ukey, body)
  local gw = redis.call('HGET', prefix .. 'sess:' .. ukey, 'gw')
  if gw then
    redis.call('PUBLISH', prefix .. 'c:gw:' .. gw, body)
  end
end
"""

# KEYS: group, members, user groups, lastid ; ARGV: gkey, group name, ukey, user name, invite_only ('0'|'1')
# -> {0} exists | {1, position}: the newest message id now, where the new member's reading starts
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'owner', ARGV[3], 'owner_name', ARGV[4], 'invite_only', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[1])
return {1, redis.call('GET', KEYS[4]) or '0-0'}
"""

# KEYS: group, members, invited, user groups, lastid ; ARGV: gkey, ukey, user name, channel
# -> {-1} no group | {0} invite-only and not invited | {1, position} joined | {2, position} already a member
_JOIN = _EVENT + """
local g = redis.call('HMGET', KEYS[1], 'name', 'invite_only')
if not g[1] then
  return {-1}
end
local position = redis.call('GET', KEYS[5]) or '0-0'
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return {2, position}
end
if g[2] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 0 then
  return {0}
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('PUBLISH', ARGV[4], event(g[1], 'joined', ARGV[3], ''))
return {1, position}
"""

# KEYS: group, members, invited, user groups, stream ; ARGV: gkey, ukey, user name, channel
# -> 0 not a member | 1 left | 2 left and the group, now empty, is gone
_LEAVE = _EVENT + """
local g = redis.call('HMGET', KEYS[1], 'name', 'owner')
if not g[1] or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('PUBLISH', ARGV[4], event(g[1], 'left', ARGV[3], ''))
if g[2] == ARGV[2] then
  local rest = redis.call('HGETALL', KEYS[2])
  if #rest == 0 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5])
    return 2
  end
  redis.call('HSET', KEYS[1], 'owner', rest[1], 'owner_name', rest[2])
  redis.call('PUBLISH', ARGV[4], event(g[1], 'owner', rest[2], ''))
end
return 1
"""

# KEYS: group, members, invited, target's groups
# ARGV: op ('invite'|'remove'|'set'), actor key, actor name, target key, target name, channel, prefix, gkey, flag
# -> -1 no group | -2 not the owner | 0 nothing to do | 1 done
_OWNER_OP = _EVENT + """
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
  local ev = '{"type":"group_event","group":"' .. g[1] .. '","event":"updated","user":"' .. ARGV[3] ..
    '","invite_only":' .. (ARGV[9] == '1' and 'true' or 'false') .. '}'
  redis.call('PUBLISH', ARGV[6], ev)
  return 1
end
if ARGV[4] == ARGV[2] then
  return -2
end
if op == 'invite' then
  if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
    return 0
  end
  redis.call('SADD', KEYS[3], ARGV[4])
  local ev = event(g[1], 'invited', ARGV[5], ARGV[3])
  redis.call('PUBLISH', ARGV[6], ev)
  control(ARGV[7], ARGV[4], '{"notify":"' .. ARGV[4] .. '","frame":' .. ev .. '}')
  return 1
end
-- remove: a member loses membership, an invitee loses the invitation
redis.call('SREM', KEYS[3], ARGV[4])
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then
  return 0
end
local ev = event(g[1], 'removed', ARGV[5], ARGV[3])
redis.call('PUBLISH', ARGV[6], ev)
redis.call('HDEL', KEYS[2], ARGV[4])
redis.call('SREM', KEYS[4], ARGV[8])
control(ARGV[7], ARGV[4], '{"part":"' .. ARGV[8] .. '","user":"' .. ARGV[4] .. '"}')
return 1
"""

# KEYS: user groups ; ARGV: prefix -> flat list of gkey, name, owner name, invite_only
_LIST = """
local out = {}
for _, gkey in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local g = redis.call('HMGET', ARGV[1] .. 'g:' .. gkey, 'name', 'owner_name', 'invite_only')
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
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._create = redis.register_script(_CREATE)
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._owner_op = redis.register_script(_OWNER_OP)
        self._list = redis.register_script(_LIST)

    async def create(self, gkey: str, name: str, ukey: str, uname: str, invite_only: bool) -> GroupState:
        result = await self._create(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.user_groups(ukey), keys.LAST_ID],
            args=[gkey, name, ukey, uname, "1" if invite_only else "0"],
        )
        if not int(result[0]):
            raise GroupExists(f"#{name} exists already")
        return GroupState(gkey, name, uname, invite_only, [uname], _s(result[1]))

    async def join(self, gkey: str, ukey: str, uname: str) -> GroupState:
        result = await self._join(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.group_invited(gkey), keys.user_groups(ukey),
                  keys.LAST_ID],
            args=[gkey, ukey, uname, keys.group_channel(gkey)],
        )
        status = int(result[0])
        if status == -1:
            raise NotFound("no such group")
        if status == 0:
            raise Forbidden("that group is invite-only: its owner must invite you first")
        state = await self.state(gkey, ukey)
        return GroupState(state.key, state.name, state.owner, state.invite_only, state.members, _s(result[1]))

    async def leave(self, gkey: str, ukey: str, uname: str) -> bool:
        """Leave; True if the group, now empty, was deleted."""
        status = int(await self._leave(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.group_invited(gkey), keys.user_groups(ukey),
                  keys.group_stream(gkey)],
            args=[gkey, ukey, uname, keys.group_channel(gkey)],
        ))
        if status == 0:
            raise NotMember()
        return status == 2

    async def owner_op(
        self, op: str, gkey: str, actor: str, actor_name: str, target: str = "", target_name: str = "",
        invite_only: bool = False,
    ) -> GroupState:
        status = int(await self._owner_op(
            keys=[keys.group(gkey), keys.group_members(gkey), keys.group_invited(gkey), keys.user_groups(target)],
            args=[op, actor, actor_name, target, target_name, keys.group_channel(gkey), keys.PREFIX, gkey,
                  "1" if invite_only else "0"],
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

    async def of_user(self, ukey: str) -> list[GroupState]:
        """Every group ``ukey`` is in (members not listed)."""
        flat = await self._list(keys=[keys.user_groups(ukey)], args=[keys.PREFIX])
        out = []
        for i in range(0, len(flat), 4):
            out.append(GroupState(_s(flat[i]), _s(flat[i + 1]), _s(flat[i + 2]), _s(flat[i + 3]) == "1", []))
        return sorted(out, key=lambda g: g.key)

    async def cursors(self, ukey: str) -> dict[str, str]:
        raw = await self.redis.hgetall(keys.group_cursors(ukey))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def save_cursors(self, ukey: str, cursors: dict[str, str]) -> None:
        if cursors:
            mapping: dict[Any, Any] = dict(cursors)
            await self.redis.hset(keys.group_cursors(ukey), mapping=mapping)
