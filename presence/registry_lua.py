"""The registry's Lua scripts (presence/registry.py explains the steps they are).

Each touches the keys of ONE hash tag, all of them passed as ``KEYS``, so each
runs on one shard of a Redis Cluster: ``{u:<key>}`` (one user's session),
``{reg}`` (leases, the online index), ``{gw:<id>}`` (one gateway's sessions and
its control channel).  Publishing is never done here except on a channel of
the script's own tag (a takeover's kick); the command, ``PUBLISH`` or
``SPUBLISH``, comes in as an ARGV (common.redis.publish_command).
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# {reg}.  KEYS: gateways, epochs, lease counter ; ARGV: node, ttl_ms, mode ('register' | 'renew')
# -> the lease's epoch | 0 (renew of a lease that is gone).  Registering a live lease keeps its epoch
# (its sessions stay valid); registering a gone one starts a new, higher epoch.
LEASE = _NOW + """
local epoch = redis.call('HGET', KEYS[2], ARGV[1])
if not (epoch and redis.call('ZSCORE', KEYS[1], ARGV[1])) then
  if ARGV[3] == 'renew' then
    return 0
  end
  epoch = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[2], ARGV[1], epoch)
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
return tonumber(epoch)
"""

# {u:<key>}: the decision.  KEYS: session, account
# ARGV: node, lease epoch, token hash, display name, takeover token hash ('' = none), mode ('claim' | 'reclaim'),
#       ms after which another session still on hold counts as abandoned ('0' = never)
# claim   -> {1, delivered cursor} | {2, delivered cursor, old gw, old token, old epoch} taken over
#            | {0, gw, token, epoch, pending} held by that session (pending '1': its login has not
#            completed, it is still on hold)
# reclaim -> {1} free again and taken | {2} still this session (now under this epoch) | {0, gw, token, epoch, ..}
# A claim finding its own session (same gateway and token: a retried claim) takes it again.  The session
# starts with 'hold' set and 'since' (claim time, Redis clock): until its gateway has written the inbox
# replay and settles it (gateway/store.py), DMs are still published to it but do not move the delivered
# cursor.  A session still on hold longer than ARGV[7] after its claim is a login that never completed
# (its claim or replay failed and its release has not reached Redis yet, or reached it before a delayed
# step of the claim): a claim takes it over as with the holder's token (presence/registry.py).
TAKE = _NOW + """
local held = redis.call('HMGET', KEYS[1], 'gw', 'token', 'epoch', 'hold', 'since')
local status = 1
local old = nil
if held[1] then
  if held[1] == ARGV[1] and held[2] == ARGV[3] then
    if ARGV[6] == 'reclaim' then
      redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
      return {2}
    end
  elseif ARGV[6] == 'claim' and ARGV[5] ~= '' and held[2] == ARGV[5] then
    status = 2
    old = {held[1], held[2], held[3] or '0'}
  elseif ARGV[6] == 'claim' and held[4] and tonumber(ARGV[7]) > 0
      and now - tonumber(held[5] or '0') >= tonumber(ARGV[7]) then
    status = 2
    old = {held[1], held[2] or '', held[3] or '0'}
  else
    return {0, held[1], held[2] or '', held[3] or '0', held[4] and '1' or '0'}
  end
end
redis.call('HSET', KEYS[1], 'gw', ARGV[1], 'epoch', ARGV[2], 'token', ARGV[3], 'name', ARGV[4], 'hold', '1',
           'since', now)
if ARGV[6] == 'reclaim' then
  return {1}
end
local cursor = redis.call('HGET', KEYS[2], 'delivered') or '0-0'
if old then
  return {2, cursor, old[1], old[2], old[3]}
end
return {1, cursor}
"""

# {u:<key>}: free a session.  KEYS: session ; ARGV: node, token hash ('' = any), highest epoch ('' = any)
# -> {display name, epoch} if it was that gateway's (and token's, under at most that epoch) and is now
#    freed | false.  The same check-and-act for a logout, the reaper and a claim finding a dead holder.
FREE = """
local s = redis.call('HMGET', KEYS[1], 'gw', 'token', 'epoch', 'name')
if s[1] ~= ARGV[1] or (ARGV[2] ~= '' and s[2] ~= ARGV[2]) then
  return false
end
if ARGV[3] ~= '' and tonumber(s[3] or '0') > tonumber(ARGV[3]) then
  return false
end
redis.call('DEL', KEYS[1])
return {s[4] or '', s[3] or '0'}
"""

# {reg}: the online index follows the sessions.  KEYS: online, owners, epochs
# ARGV: node, lease epoch, how many online names to return ('0': none), then (key, token hash, name)*
# -> {-1} the lease (this epoch) is gone | {1, names newly online, first names (one more than asked,
#    to tell if there are more), online count}.  Checking the lease here, after the session was written,
#    closes the race with a reaper: either this ran before the reaper took the lease away (the reaper
#    then finds the session in the gateway's set and frees it), or it fails and the gateway re-claims.
ONLINE_ADD = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return {-1}
end
local added = {}
for i = 4, #ARGV, 3 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[i + 2] .. '\\n' .. ARGV[1])
  if redis.call('ZADD', KEYS[1], 0, ARGV[i + 2]) == 1 then
    added[#added + 1] = ARGV[i + 2]
  end
end
local limit = tonumber(ARGV[3])
if limit == 0 then
  return {1, added, {}, 0}
end
local names = redis.call('ZRANGEBYLEX', KEYS[1], '-', '+', 'LIMIT', 0, limit + 1)
return {1, added, names, redis.call('ZCARD', KEYS[1])}
"""

# {reg}.  KEYS: online, owners ; ARGV: node, highest epoch ('' = any), then (key, token hash)*
# -> {key, name}* removed: each name only if that very session (node and token) put it there, under at
#    most that epoch, so a late release or reap never takes a newer session's name off the index.
# An owner entry is "<token hash> <epoch> <display name>\n<node>" (names hold no control characters).
ONLINE_DROP = """
local out = {}
for i = 3, #ARGV, 2 do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner then
    local token, epoch, name, node = string.match(owner, '^(%S*) (%d+) ([^\\n]*)\\n(.*)$')
    if token == ARGV[i + 1] and node == ARGV[1] and (ARGV[2] == '' or tonumber(epoch) <= tonumber(ARGV[2])) then
      redis.call('HDEL', KEYS[2], ARGV[i])
      redis.call('ZREM', KEYS[1], name)
      out[#out + 1] = ARGV[i]
      out[#out + 1] = name
    end
  end
end
return out
"""

# {reg}.  KEYS: gateways, epochs, reaping ; ARGV: batch size, node ('' = every expired lease)
# -> flat {node, epoch}*: the leases taken away now, plus those a reaper began to free and did not finish
# (a gateway may have registered a new lease since: that one is not touched).  Taking the lease away
# first means no claim under it can complete after this (ONLINE_ADD checks).
REAP_START = _NOW + """
local ids
if ARGV[2] ~= '' then
  ids = {ARGV[2]}
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[1]))
end
for _, gw in ipairs(ids) do
  local epoch = redis.call('HGET', KEYS[2], gw)
  if epoch then
    redis.call('HSET', KEYS[3], gw, epoch)
    redis.call('HDEL', KEYS[2], gw)
  end
  redis.call('ZREM', KEYS[1], gw)
end
if ARGV[2] ~= '' then
  local epoch = redis.call('HGET', KEYS[3], ARGV[2])
  return epoch and {ARGV[2], epoch} or {}
end
local out = {}
local pending = redis.call('HGETALL', KEYS[3])
for i = 1, #pending, 2 do
  out[#out + 1] = pending[i]
  out[#out + 1] = pending[i + 1]
end
return out
"""

# {reg}.  KEYS: reaping ; ARGV: node, epoch.  The reap of that lease is complete.
REAP_DONE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""

# {gw:<old>}: after a takeover.  KEYS: the old gateway's sessions ; ARGV: the old session's member,
# the old gateway's control channel, publish command, kick frame.  The old gateway closes that socket.
KICK = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call(ARGV[3], ARGV[2], ARGV[4])
return 1
"""
