"""The Lua scripts of :mod:`gateway.groups`, each touching the keys of ONE hash tag (docs/cluster.md).

Group-slot scripts all take the same KEYS (:func:`group_keys`) and start their
ARGV with the publish command (``PUBLISH``/``SPUBLISH``, common.redis.publish_command),
the group's channel and the group key; they publish only on that channel, which
carries the group's tag.  User-slot scripts take only the user's keys.  Nothing
here reads a member's session or a gateway's control channel: what a non-member
must hear (an invitation) goes to the user's own channel from a user-slot step.
"""

from __future__ import annotations

from common import keys
from common.lua_json import Const, IfSet, Raw, Text, json_expr
from gateway.lua_ids import LATER
from protocol import control
from protocol import frames as f


def group_keys(gkey: str) -> list[str]:
    """KEYS of every group-slot script, in this order (all tagged ``{g:<gkey>}``)."""
    return [keys.group(gkey), keys.group_members(gkey), keys.group_invited(gkey), keys.group_order(gkey),
            keys.group_since(gkey), keys.group_clock(gkey), keys.group_stream(gkey), keys.group_ended(gkey)]


# Helpers of the group-slot scripts.  KEYS: [1] group, [2] members, [3] invited, [4] order, [5] since,
# [6] clock, [7] stream, [8] ended.  ARGV: [1] publish command, [2] the group's channel, [3] gkey.
_GROUP = LATER + """
-- The group's position now: the last id its clock handed out ("0-0" if none), or the stream's last
-- entry if that is later (a stream written before the clock existed).
local function now_of()
  local now = redis.call('GET', KEYS[6]) or '0-0'
  local last = redis.call('XREVRANGE', KEYS[7], '+', '-', 'COUNT', 1)[1]
  if last and later(last[1], now) then
    now = last[1]
  end
  return now
end
local function pub(frame)
  redis.call(ARGV[1], ARGV[2], frame)
end
local function event(gname, what, user, by)
  return """ + json_expr(f.GroupEvent, group=Text("gname"), event=Text("what"), user=Text("user"),
                         by=IfSet(Text("by"))) + """
end
-- Hidden marker a gateway waits for on the group's channel (never sent to clients): published right
-- after a membership is created, so a frame after it on the channel is after the membership.
local function mark(nonce)
  if nonce ~= '' then
    pub(""" + json_expr(control.Mark, n=Text("nonce")) + """)
  end
end
local function add_member(ukey, uname, position)
  redis.call('HSET', KEYS[2], ukey, uname)
  redis.call('ZADD', KEYS[4], redis.call('HINCRBY', KEYS[1], 'seq', 1), ukey)
  redis.call('HSET', KEYS[5], ukey, position)
  redis.call('HDEL', KEYS[8], ukey)
end
-- Ends ukey's membership at the group's position now; records its span in the group's slot (the
-- user's side copies it in a second step) and returns since, upto.
local function end_member(ukey, ttl)
  local since = redis.call('HGET', KEYS[5], ukey) or '0-0'
  local upto = now_of()
  redis.call('HDEL', KEYS[2], ukey)
  redis.call('ZREM', KEYS[4], ukey)
  redis.call('HDEL', KEYS[5], ukey)
  redis.call('HSET', KEYS[8], ukey, since .. ' ' .. upto)
  redis.call('EXPIRE', KEYS[8], ttl)
  return since, upto
end
"""

# ARGV: [4] name, [5] ukey, [6] user name, [7] invite_only ('0'|'1'), [8] marker nonce
# -> {0, is a member (0|1)} exists | {1, position}: the group's position now, where the new member's reading starts
CREATE = _GROUP + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HEXISTS', KEYS[2], ARGV[5])}
end
local position = now_of()
redis.call('HSET', KEYS[1], 'name', ARGV[4], 'owner', ARGV[5], 'owner_name', ARGV[6], 'invite_only', ARGV[7])
add_member(ARGV[5], ARGV[6], position)
mark(ARGV[8])
return {1, position}
"""

# ARGV: [4] ukey, [5] user name, [6] marker nonce
# -> {-1} no group | {0} invite-only and not invited | {1, position} joined | {2, position} already a member
JOIN = _GROUP + """
local g = redis.call('HMGET', KEYS[1], 'name', 'invite_only')
if not g[1] then
  return {-1}
end
local position = now_of()
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
  mark(ARGV[6])
  return {2, position}
end
if g[2] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 0 then
  return {0}
end
add_member(ARGV[4], ARGV[5], position)
redis.call('SREM', KEYS[3], ARGV[4])
mark(ARGV[6])
pub(event(g[1], 'joined', ARGV[5], ''))
return {1, position}
"""

# ARGV: [4] ukey, [5] user name, [6] seconds an ended membership's span is kept
# -> {0} not a member | {1, upto, since} left | {2, upto, since, invitee...} left and the group, now empty, is
# gone (its invitees' pending invitations are for the caller to drop, in their slots).
# The member who joined longest ago becomes owner when the owner leaves (members of a group made before
# join order was recorded come after, by key).
LEAVE = _GROUP + """
local g = redis.call('HMGET', KEYS[1], 'name', 'owner')
if not g[1] or redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then
  return {0}
end
local since, upto = end_member(ARGV[4], tonumber(ARGV[6]))
pub(event(g[1], 'left', ARGV[5], ''))
if g[2] == ARGV[4] then
  if redis.call('HLEN', KEYS[2]) == 0 then
    local out = {2, upto, since}
    for _, invitee in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      out[#out + 1] = invitee
    end
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7])
    -- The clock outlives the group a while, so a group made again under this name goes on from it.
    redis.call('EXPIRE', KEYS[6], tonumber(ARGV[6]))
    return out
  end
  local heir = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
  if not heir then
    local rest = redis.call('HKEYS', KEYS[2])
    table.sort(rest)
    heir = rest[1]
  end
  local heir_name = redis.call('HGET', KEYS[2], heir)
  redis.call('HSET', KEYS[1], 'owner', heir, 'owner_name', heir_name)
  pub(event(g[1], 'owner', heir_name, ''))
end
return {1, upto, since}
"""

# ARGV: [4] op ('invite'|'remove'|'set'), [5] actor key, [6] actor name, [7] target key, [8] target name,
#       [9] flag, [10] seconds an ended membership's span is kept
# -> {-1} no group | {-2} not the owner | {0} nothing to do | {1} done | {1, frame} invited (the frame for the
#    invitee) | {3, since, upto} a member removed.  A removal publishes the 'removed' event and, right after
#    it, a hidden ``part`` notice carrying the membership's span (gateway/group_relay.py): the removed
#    member's gateway is subscribed to this channel, so it stops delivery in channel order.
OWNER_OP = _GROUP + """
local g = redis.call('HMGET', KEYS[1], 'name', 'owner')
if not g[1] then
  return {-1}
end
if g[2] ~= ARGV[5] then
  return {-2}
end
local op = ARGV[4]
if op == 'set' then
  redis.call('HSET', KEYS[1], 'invite_only', ARGV[9])
  pub(""" + json_expr(f.GroupEvent, group=Text("g[1]"), event=Const("updated"), user=Text("ARGV[6]"),
                      invite_only=Raw("(ARGV[9] == '1' and 'true' or 'false')")) + """)
  return {1}
end
if ARGV[7] == ARGV[5] then
  return {-2}
end
if op == 'invite' then
  if redis.call('HEXISTS', KEYS[2], ARGV[7]) == 1 then
    return {0}
  end
  redis.call('SADD', KEYS[3], ARGV[7])
  local ev = event(g[1], 'invited', ARGV[8], ARGV[6])
  pub(ev)
  return {1, ev}
end
-- remove: a member loses membership, an invitee loses the invitation
redis.call('SREM', KEYS[3], ARGV[7])
if redis.call('HEXISTS', KEYS[2], ARGV[7]) == 0 then
  return {0}
end
-- The membership ends at the group's position now: the member is owed everything stored up to it.
pub(event(g[1], 'removed', ARGV[8], ARGV[6]))
local since, upto = end_member(ARGV[7], tonumber(ARGV[10]))
pub(""" + json_expr(control.Part, group=Text("ARGV[3]"), user=Text("ARGV[7]"), since=IfSet(Text("since")),
                    upto=IfSet(Text("upto"))) + """)
return {3, since, upto}
"""

# KEYS: as above ; ARGV: [1] ukey -> {now, since or '' (not a member), name or '' (no group), owner name,
# invite_only, ended span or ''}: one group as one user sees it, read in one step.
VIEW = _GROUP + """
local g = redis.call('HMGET', KEYS[1], 'name', 'owner_name', 'invite_only')
local since = ''
if g[1] and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  since = redis.call('HGET', KEYS[5], ARGV[1]) or '0-0'
end
return {now_of(), since, g[1] or '', g[2] or '', g[3] or '0', redis.call('HGET', KEYS[8], ARGV[1]) or ''}
"""

# User slot.  KEYS: user groups, invitations ; ARGV: gkey -- the user's side of a membership Redis made.
ADOPT = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# User slot.  KEYS: user's cursors, parted, invitations ; ARGV: gkey, "since upto" (or ''), ttl -- the user's
# side of a membership that ended.  Idempotent and safe to run late: the parted record only moves to a
# later span, and a cursor beyond ``upto`` belongs to a later membership and stays.
PART_USER = LATER + """
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[2] == '' then
  return 0
end
local upto = string.match(ARGV[2], ' (.+)$')
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and not later(cur, upto) then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old or later(upto, string.match(old, ' (.+)$')) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""

# User slot.  KEYS: invitations ; ARGV: gkey, frame, publish command, the user's channel -- a pending
# invitation, and the frame to the user's session wherever it is.
INVITE_USER = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call(ARGV[3], ARGV[4], ARGV[2])
return 1
"""

# User slot.  KEYS: user's cursors ; ARGV: gkey, id, gkey, id, ... -- each cursor only ever moves forward,
# so a late flush of an older session never sends a newer one back.
SAVE_CURSORS = LATER + """
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or later(ARGV[i + 1], cur) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""
