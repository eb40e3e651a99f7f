"""The Lua of the message store (gateway/store.py): one script per send kind, each in ONE hash slot.

On a Redis Cluster a script may only touch keys of one slot (docs/cluster.md), so every send
script works in the slot of the stream it writes: a DM in the recipient's (``{u:<to>}``), a group
message in the group's (``{g:<gkey>}``), a broadcast in ``{all}``.  The sender's rate token is a
separate script in the sender's slot (``RATE``), run first: a refused token means nothing is stored.

Ids come from the stream owner's clock (``NEXT_ID``), not from one global counter.

Argument layout shared by the three send scripts (the fragments below rely on it):

* KEYS[1] dedupe key, KEYS[2] the owner's clock, KEYS[3] the stream, KEYS[4] its origin key, and
  KEYS[#KEYS] the stream's "published up to" cursor (``keys.published``);
* ARGV[1] digest ('' = no ref), ARGV[2] dedupe TTL (s), ARGV[3] sender name (JSON), ARGV[4] body
  (JSON), ARGV[5] maxlen, ARGV[6] channel, ARGV[7] file JSON or '', ARGV[8] the publish command
  (common.redis.publish_command: PUBLISH, or SPUBLISH on a cluster), or '' to store without
  publishing (``--durability replica``: ``PUBLISH_UPTO`` publishes once ``WAIT`` has confirmed the
  write, see gateway/store.py), ARGV[9] floor id or '', ARGV[10] seq parity ('0', '1' or '').
"""

from __future__ import annotations

from common.lua_json import IfSet, Raw, Text, json_expr
from gateway.lua_ids import LATER
from protocol import frames as f

# Returns the earlier result of a retried send: ARGV[1] is a digest of what is sent, so a ref reused
# for a *different* message is a new send.
_DEDUPE = """
if ARGV[1] ~= '' then
  local prev = redis.call('GET', KEYS[1])
  if prev then
    local pid, pms, pdigest = string.match(prev, '^(%S+) (%d+) (%S+)$')
    if pdigest == ARGV[1] then
      return {2, pid, pms}
    end
  end
end
"""

# Records this send's result for retries.
_REMEMBER = """
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], id .. ' ' .. string.format('%d', ms) .. ' ' .. ARGV[1], 'EX', ARGV[2])
end
"""

# Sets `id` (string) and `ms` (number): the smallest (ms, seq) that is above the owner's clock
# (KEYS[2], the last id it handed out) and above the floor (ARGV[9]), not below (TIME_ms, 0), and
# whose seq has the parity asked for (ARGV[10]); then moves the clock there.  So ids strictly
# increase per clock (per stream), `ms` is the Redis TIME unless the clock or floor is ahead of it,
# and a floor orders a reply after what its sender had seen though another shard numbered that.
NEXT_ID = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local function above(bound)
  if bound and bound ~= '' then
    local bms, bseq = string.match(bound, '^(%d+)-(%d+)$')
    bms, bseq = tonumber(bms), tonumber(bseq)
    if bms > ms or (bms == ms and bseq >= seq) then
      ms, seq = bms, bseq + 1
    end
  end
end
above(redis.call('GET', KEYS[2]))
above(ARGV[9])
if ARGV[10] ~= '' and seq % 2 ~= tonumber(ARGV[10]) then
  seq = seq + 1
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', KEYS[2], id)
"""


def _message(to: str) -> str:
    """Lua building the message frame (protocol.frames.Message, common/lua_json.py): ``id`` and ``ms``
    from NEXT_ID, the sender's and the body's JSON in ARGV[3] and ARGV[4], ``to`` as given and the
    file's JSON (ARGV[7], or '').  Stored as is, so history, replay and live delivery send these bytes."""
    return json_expr(
        f.Message, id=Text("id"), from_=Raw("ARGV[3]"), to=Text(to), body=Raw("ARGV[4]"),
        ts=Raw("string.format('%d', ms)"), file=IfSet(Raw("ARGV[7]")),
    )


# Appends `frame` as `id` to the stream KEYS[3] (trimmed with MAXLEN ~), recording in its origin key
# KEYS[4] the id of the first entry of a new stream (Store.replay reads it).  Trimming to a maxlen of
# 2 or more never leaves a single entry, so one entry after the XADD means the stream was empty: new,
# or deleted and created again (a group of the same name).
_XADD = """
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], id, 'f', frame)
if redis.call('XLEN', KEYS[3]) == 1 and tonumber(ARGV[5]) > 1 then
  redis.call('SET', KEYS[4], id)
end
"""

# Store-only mode (ARGV[8] == ''): a stream that has no "published up to" cursor yet gets one at its
# last entry, before this one is added: everything already in it was published by the store-and-publish
# scripts (memory mode), nothing after it has been.  An empty stream (new, or a deleted group's made
# again) starts from '0-0', whatever a cursor left from before says.  Written in the same script as
# the entry, so a replica that has the entry has the cursor too.
_CURSOR = """
if ARGV[8] == '' then
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
  if not last then
    redis.call('SET', KEYS[#KEYS], '0-0')
  elseif redis.call('EXISTS', KEYS[#KEYS]) == 0 then
    redis.call('SET', KEYS[#KEYS], last[1])
  end
end
"""

_STORED = """
return {1, id, string.format('%d', ms)}
"""

# A token bucket (the sender's send bucket here; gateway/request_rate.py builds its request bucket
# from the same text).  KEYS[#KEYS] is the bucket; ARGV[#ARGV - 1] the refill rate per second
# (0 = unlimited), ARGV[#ARGV] the burst.  Returns {-9, ms to wait} when empty, else falls through.
RATE_BUCKET = """
local rate, burst = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
if rate > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local b = redis.call('HMGET', KEYS[#KEYS], 'tokens', 'ts')
  local tokens = math.min(burst, (tonumber(b[1]) or burst) + (now - (tonumber(b[2]) or now)) * rate)
  if tokens < 1 then
    return {-9, math.ceil((1 - tokens) / rate * 1000)}
  end
  redis.call('HSET', KEYS[#KEYS], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[#KEYS], math.ceil(burst / rate * 1000) + 1000)
end
"""

# Step 1 of a send, in the sender's slot.  KEYS: the sender's bucket; ARGV: rate, burst.
# -> {1} a token taken | {-9, ms to wait}
RATE = RATE_BUCKET + "return {1}\n"

# In the recipient's slot.  KEYS: dedupe, recipient's clock, inbox, inbox origin, recipient's half of
# the conversation with the sender (keys.dm_half), recipient account, recipient session, the inbox's
# published cursor.
# ARGV: the shared layout (ARGV[6] the recipient's channel).
# -> {0} unknown user | {1, id, ms} | {2, id, ms} a retry of an earlier send
# The inbox (offline delivery, resume), the history half, the publish and the `delivered` cursor
# move together: a crash leaves all or nothing.  `delivered` moves unless the session is on `hold`
# (claimed, inbox replay not yet written, see Store.settle).  Store-only (ARGV[8] == ''): PUBLISH_UPTO
# does the publish and the cursor move later, from the inbox.
SEND_DM = _DEDUPE + """
local name = redis.call('HGET', KEYS[6], 'name')
if not name then
  return {0}
end
""" + _CURSOR + NEXT_ID + """
local frame = """ + _message("'@' .. name") + """
""" + _XADD + """
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], id, 'f', frame)
local held = redis.call('HMGET', KEYS[7], 'gw', 'hold')
if held[1] and ARGV[8] ~= '' then
  redis.call(ARGV[8], ARGV[6], frame)
  if not held[2] then
    redis.call('HSET', KEYS[6], 'delivered', id)
  end
end
""" + _REMEMBER + _STORED

# In {all}.  KEYS: dedupe, broadcast clock, broadcast stream, its origin, its published cursor.
# ARGV: the shared layout.
SEND_BROADCAST = _DEDUPE + _CURSOR + NEXT_ID + """
local frame = """ + _message("'*'") + """
""" + _XADD + """
if ARGV[8] ~= '' then
  redis.call(ARGV[8], ARGV[6], frame)
end
""" + _REMEMBER + _STORED

# In the group's slot.  KEYS: dedupe, group clock, group stream, its origin, group, members, the
# stream's published cursor.
# ARGV: the shared layout (ARGV[6] the group channel), ARGV[11] the sender's key.
# -> {-1} no such group | {0} not a member | {1, id, ms} | {2, id, ms} a retry
SEND_GROUP = _DEDUPE + """
local gname = redis.call('HGET', KEYS[5], 'name')
if not gname then
  return {-1}
end
if redis.call('HEXISTS', KEYS[6], ARGV[11]) == 0 then
  return {0}
end
""" + _CURSOR + NEXT_ID + """
local frame = """ + _message("'#' .. gname") + """
""" + _XADD + """
if ARGV[8] ~= '' then
  redis.call(ARGV[8], ARGV[6], frame)
end
""" + _REMEMBER + _STORED

# Step 2 of a send in store-only mode (--durability replica), after WAIT confirmed step 1, in the
# stream's slot.  KEYS: the stream's published cursor, the stream (a DM: the recipient's inbox), and
# for a DM the recipient's account and session.  ARGV: the id to publish up to, the publish command,
# the channel.  Publishes, in id order, every entry after the cursor up to that id, and moves the
# cursor there: steps run in any order (two gateways, a retry) publish each entry once, in order (an
# entry at or below the cursor is skipped).  No cursor (a retry of a send stored before there was
# one): only that id.  A DM does what SEND_DM's publish does: published to the recipient's channel if
# they have a session, `delivered` moved (forward only) unless it is on `hold`.
# -> the number of entries published
PUBLISH_UPTO = LATER + """
local cur = redis.call('GET', KEYS[1])
local from = ARGV[1]
if cur then
  if not later(ARGV[1], cur) then
    return 0
  end
  from = '(' .. cur
end
redis.call('SET', KEYS[1], ARGV[1])
local entries = redis.call('XRANGE', KEYS[2], from, ARGV[1])
if #entries == 0 then
  return 0
end
local move = false
if #KEYS == 4 then
  local held = redis.call('HMGET', KEYS[4], 'gw', 'hold')
  if not held[1] then
    return 0
  end
  move = not held[2]
end
for _, entry in ipairs(entries) do
  redis.call(ARGV[2], ARGV[3], entry[2][2])
end
local last = entries[#entries][1]
if move then
  local delivered = redis.call('HGET', KEYS[3], 'delivered')
  if not delivered or later(last, delivered) then
    redis.call('HSET', KEYS[3], 'delivered', last)
  end
end
return #entries
"""

# KEYS: account ; ARGV: id -- only ever moves the cursor forward
ADVANCE = """
local cur = redis.call('HGET', KEYS[1], 'delivered')
if cur then
  local cms, cseq = string.match(cur, '^(%d+)-(%d+)$')
  local nms, nseq = string.match(ARGV[1], '^(%d+)-(%d+)$')
  cms, cseq, nms, nseq = tonumber(cms), tonumber(cseq), tonumber(nms), tonumber(nseq)
  if nms < cms or (nms == cms and nseq <= cseq) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'delivered', ARGV[1])
return 1
"""

# KEYS: account, session ; ARGV: id, token hash -- the session has written its inbox up to ``id``:
# move the cursor there (forward only) and, if the session still holds the name, lift its 'hold',
# so from now on a DM published to it moves the cursor at once.
SETTLE = """
local cur = redis.call('HGET', KEYS[1], 'delivered')
local nms, nseq = string.match(ARGV[1], '^(%d+)-(%d+)$')
nms, nseq = tonumber(nms), tonumber(nseq)
local forward = true
if cur then
  local cms, cseq = string.match(cur, '^(%d+)-(%d+)$')
  cms, cseq = tonumber(cms), tonumber(cseq)
  forward = nms > cms or (nms == cms and nseq > cseq)
end
if forward and (nms > 0 or nseq > 0) then
  redis.call('HSET', KEYS[1], 'delivered', ARGV[1])
end
if redis.call('HGET', KEYS[2], 'token') == ARGV[2] then
  redis.call('HDEL', KEYS[2], 'hold')
end
return 1
"""
