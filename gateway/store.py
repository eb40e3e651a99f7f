"""Message storage in Redis Streams: store-and-publish in one Lua call, history, replay.

A message is appended to its conversation stream and published in the same
atomic script, so nothing is ever delivered live without being stored.
Message ids come from one global counter (``cw:lastid``, "<ms>-<seq>" on the
Redis clock): ids are unique everywhere and ordered in every stream, and the
same id names a message in its conversation, in the recipient's inbox and on
the wire.  The frame JSON is built once, inside the script, and stored as is:
history, replay and live delivery all send those same bytes.

A DM goes to three places: the pair's conversation stream (history), the
recipient's inbox stream (offline delivery, resume), and, if the recipient is
online, their pub/sub channel, advancing their ``delivered`` cursor unless the
session is still on ``hold`` (claimed, inbox replay not yet written: see
``_SETTLE``), so the cursor never passes a DM no session was sent.  A DM to an
offline user is stored and acked; the gateway replays the inbox after the
cursor at their next login.

Sends are idempotent per (sender, ref): the first run records its id (and a
digest of recipient and body) under a dedupe key that lives ``dedupe_ttl``
seconds, and a retry with the same ref and content (after a reconnect, or an
``unavailable`` whose script did run) gets that id back without storing or
publishing again.  A ref reused for different content is simply a new send.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from common.lua_json import IfSet, Raw, Text, json_expr
from protocol import frames as f
from protocol.errors import NotFound, NotMember, RateLimited
from protocol.names import id_tuple

from .pipeline import AutoPipeline

# Returns the earlier result of a retried send.  KEYS[1] is its dedupe key; ARGV[1] is a digest
# of what is sent ('' when the send has no ref): a ref reused for a *different* message is a new send.
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

# Records this send's result for retries: ARGV[2] is the dedupe TTL in seconds.
_REMEMBER = """
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], id .. ' ' .. string.format('%d', ms) .. ' ' .. ARGV[1], 'EX', ARGV[2])
end
"""

# The sender's token bucket (after the dedupe check: a retry costs nothing).  KEYS[#KEYS] is the
# bucket; ARGV[#ARGV - 1] the refill rate per second (0 = unlimited), ARGV[#ARGV] the burst.
_RATE = """
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

# Sets `id` (string) and `ms` (number): the next global message id.  KEYS[2] is cw:lastid.
_NEXT_ID = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local last = redis.call('GET', KEYS[2])
if last then
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  lms = tonumber(lms)
  if lms >= ms then
    ms = lms
    seq = tonumber(lseq) + 1
  end
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', KEYS[2], id)
"""


def _message(to: str, file: str) -> str:
    """Lua building the message frame (protocol.frames.Message, common/lua_json.py): ``id`` and ``ms``
    from _NEXT_ID, the sender's and the body's JSON in ARGV[3] and ARGV[4], ``to`` and the file's JSON
    (or '') as given.  Stored as is, so history, replay and live delivery send these same bytes."""
    return json_expr(
        f.Message, id=Text("id"), from_=Raw("ARGV[3]"), to=Text(to), body=Raw("ARGV[4]"),
        ts=Raw("string.format('%d', ms)"), file=IfSet(Raw(file)),
    )


def _xadd(stream: str, origins: str) -> str:
    """Lua appending ``frame`` as ``id`` to ``stream`` (trimmed with ``MAXLEN ~``), recording in
    ``origins`` the id of the first entry of a new stream (``Store.replay`` reads it).

    Trimming to a maxlen of 2 or more never leaves a single entry, so one entry after the XADD
    means the stream was empty: new, or deleted and created again (a group of the same name).
    """
    return f"""
redis.call('XADD', {stream}, 'MAXLEN', '~', ARGV[5], id, 'f', frame)
if redis.call('XLEN', {stream}) == 1 and tonumber(ARGV[5]) > 1 then
  redis.call('HSET', {origins}, {stream}, id)
end
"""


# KEYS: dedupe, lastid, conversation stream, inbox stream, recipient account, recipient session, stream origins
# ARGV: has ref, dedupe ttl, sender name (JSON), body (JSON), maxlen, recipient channel
# -> {0} unknown user | {1, id, ms} | {2, id, ms} a retry of an earlier send
_SEND_DM = _DEDUPE + _RATE + """
local name = redis.call('HGET', KEYS[5], 'name')
if not name then
  return {0}
end
""" + _NEXT_ID + """
local frame = """ + _message("'@' .. name", "ARGV[7]") + """
""" + _xadd("KEYS[3]", "KEYS[7]") + _xadd("KEYS[4]", "KEYS[7]") + """
local held = redis.call('HMGET', KEYS[6], 'gw', 'hold')
if held[1] then
  redis.call('PUBLISH', ARGV[6], frame)
  if not held[2] then
    redis.call('HSET', KEYS[5], 'delivered', id)
  end
end
""" + _REMEMBER + """
return {1, id, string.format('%d', ms)}
"""

# KEYS: dedupe, lastid, broadcast stream, stream origins
# ARGV: has ref, dedupe ttl, sender (JSON), body (JSON), maxlen, channel
_SEND_BROADCAST = _DEDUPE + _RATE + _NEXT_ID + """
local frame = """ + _message("'*'", "ARGV[7]") + """
""" + _xadd("KEYS[3]", "KEYS[4]") + """
redis.call('PUBLISH', ARGV[6], frame)
""" + _REMEMBER + """
return {1, id, string.format('%d', ms)}
"""

# KEYS: dedupe, lastid, group stream, group, members, stream origins
# ARGV: digest, dedupe ttl, sender (JSON), body (JSON), maxlen, group channel, sender key
# -> {-1} no such group | {0} not a member | {1, id, ms} | {2, id, ms} a retry
_SEND_GROUP = _DEDUPE + _RATE + """
local gname = redis.call('HGET', KEYS[4], 'name')
if not gname then
  return {-1}
end
if redis.call('HEXISTS', KEYS[5], ARGV[7]) == 0 then
  return {0}
end
""" + _NEXT_ID + """
local frame = """ + _message("'#' .. gname", "ARGV[8]") + """
""" + _xadd("KEYS[3]", "KEYS[6]") + """
redis.call('PUBLISH', ARGV[6], frame)
""" + _REMEMBER + """
return {1, id, string.format('%d', ms)}
"""

# KEYS: account ; ARGV: id -- only ever moves the cursor forward
_ADVANCE = """
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
_SETTLE = """
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

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    ts: int
    duplicate: bool = False  # a retry: nothing new was stored


@dataclass(frozen=True, slots=True)
class Replay:
    frames: list[tuple[str, bytes]]  # (id, frame) after the resume point, oldest first
    recovered: bool  # False when trimming may have removed messages after the resume point


def _stored(result: list[Any]) -> Stored:
    if int(result[0]) == -9:
        raise RateLimited("sending too fast", retry_after=int(result[1]) / 1000)
    return Stored(_text(result[1]), int(result[2]), duplicate=int(result[0]) == 2)


def _digest(ref: str | None, to: str, body: str, file_json: bytes = b"") -> str:
    """What a retry must match to count as the same send ('' = no ref, no dedupe)."""
    if not ref:
        return ""
    return hashlib.blake2b(f"{to}\0{body}\0".encode() + file_json, digest_size=8).hexdigest()


def _recovered(first: list[Any] | None, origin: bytes | None, after: str) -> bool:
    """No entry after ``after`` was trimmed: the stream is empty, its oldest entry is not newer than
    ``after``, or its oldest entry is its recorded first one (never trimmed).  A stream with no recorded
    origin (stored before origins were recorded) counts as possibly trimmed."""
    if not first:
        return True
    oldest = _text(first[0][0])
    return id_tuple(oldest) <= id_tuple(after) or (origin is not None and _text(origin) == oldest)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """Appends, reads and replays messages; one Redis round trip per operation."""

    def __init__(
        self, redis: Redis | RedisCluster, maxlen: int = 10_000, dedupe_ttl: int = 300, rate: float = 0.0,
        burst: int = 1,
        pipeline: AutoPipeline | None = None,
    ) -> None:
        self.redis = redis
        self.pipeline = pipeline  # sends go through it when given (the gateway), else through ``redis``
        self.maxlen = maxlen
        self.dedupe_ttl = dedupe_ttl
        self.rate = rate  # sends per second per user (0: unlimited)
        self.burst = burst
        self._send_dm = redis.register_script(_SEND_DM)
        self._send_broadcast = redis.register_script(_SEND_BROADCAST)
        self._send_group = redis.register_script(_SEND_GROUP)
        self._advance = redis.register_script(_ADVANCE)
        self._settle = redis.register_script(_SETTLE)

    def _run(self, script: Any, keys: list[Any], args: list[Any]) -> Awaitable[Any]:
        """The script's reply, to await: through the auto-pipeline (its future, no extra frame) or redis-py."""
        if self.pipeline is not None:
            return self.pipeline.evalsha(script, keys, args)
        return cast(Awaitable[Any], script(keys=keys, args=args))

    async def send_dm(
        self, sender_json: bytes, sender_key: str, to_key: str, body: str, ref: str | None = None,
        file_json: bytes = b"",
    ) -> Stored | None:
        """Store and deliver a DM once per (sender, ref); None if the recipient has no account."""
        result = await self._run(
            self._send_dm,
            [
                keys.dedupe(sender_key, ref or ""),
                keys.LAST_ID,
                keys.dm_stream(sender_key, to_key),
                keys.inbox_stream(to_key),
                keys.account(to_key),
                keys.session(to_key),
                keys.STREAM_ORIGINS,
                keys.rate(sender_key),
            ],
            [
                _digest(ref, to_key, body, file_json), self.dedupe_ttl, sender_json, _json.encode(body), self.maxlen,
                keys.user_channel(to_key), file_json, self.rate, self.burst,
            ],
        )
        if int(result[0]) == 0:
            return None
        return _stored(result)  # raises RateLimited for -9

    async def send_broadcast(
        self, sender_json: bytes, sender_key: str, body: str, ref: str | None = None, file_json: bytes = b""
    ) -> Stored:
        """Store and publish a broadcast once per (sender, ref)."""
        result = await self._run(
            self._send_broadcast,
            [keys.dedupe(sender_key, ref or ""), keys.LAST_ID, keys.BROADCAST_STREAM, keys.STREAM_ORIGINS,
             keys.rate(sender_key)],
            [_digest(ref, "*", body, file_json), self.dedupe_ttl, sender_json, _json.encode(body), self.maxlen,
                  keys.BROADCAST_CHANNEL, file_json, self.rate, self.burst],
        )
        return _stored(result)

    async def send_group(
        self, sender_json: bytes, sender_key: str, gkey: str, body: str, ref: str | None = None,
        file_json: bytes = b"",
    ) -> Stored:
        """Store and publish to a group's members once per (sender, ref); NotFound / NotMember otherwise."""
        result = await self._run(
            self._send_group,
            [keys.dedupe(sender_key, ref or ""), keys.LAST_ID, keys.group_stream(gkey), keys.group(gkey),
             keys.group_members(gkey), keys.STREAM_ORIGINS, keys.rate(sender_key)],
            [_digest(ref, "#" + gkey, body, file_json), self.dedupe_ttl, sender_json, _json.encode(body),
                  self.maxlen, keys.group_channel(gkey), sender_key, file_json, self.rate,
                  self.burst],
        )
        status = int(result[0])
        if status == -9:
            return _stored(result)  # raises RateLimited
        if status == -1:
            raise NotFound("no such group")
        if status == 0:
            raise NotMember()
        return _stored(result)

    async def history(self, stream: str, before: str | None, limit: int) -> list[msgspec.Raw]:
        """Up to ``limit`` frames before ``before`` (exclusive), oldest first."""
        start = f"({before}" if before else "+"
        rows: list[Any] = await self.redis.xrevrange(stream, start, "-", count=limit) or []
        rows.reverse()
        return [msgspec.Raw(fields[b"f"]) for _, fields in rows]

    async def stream_after(self, stream: str, after: str, limit: int = 10_000) -> list[tuple[str, bytes]]:
        """Stream entries strictly after ``after``, oldest first: (id, frame)."""
        rows: list[Any] = await self.redis.xrange(stream, f"({after}", "+", count=limit) or []
        return [(_text(rid), fields[b"f"]) for rid, fields in rows]

    async def replay(self, stream: str, after: str) -> Replay:
        """Everything after ``after``, and whether that is provably everything.

        Trimming (``MAXLEN ~``, by whichever gateway adds to the stream, each
        with its own ``--stream-maxlen``) only ever removes the oldest entries.
        So nothing after ``after`` is missing if the oldest surviving entry is
        not newer than ``after``, or if it is still the stream's first entry
        (recorded in ``cw:sorigin`` by the send scripts when they create the
        stream: it was never trimmed).  Otherwise we cannot prove it and say False.  Neither test
        depends on any gateway's maxlen.  (Redis 7's ``XINFO STREAM``
        ``max-deleted-entry-id`` would be exact, but Redis 7.0 moves it only on
        ``XDEL``, not when ``MAXLEN`` trims, and the embedded Redis is 6.2.)
        """
        page = 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(stream, f"({after}", "+", count=page)
            pipe.xrange(stream, "-", "+", count=1)
            pipe.hget(keys.STREAM_ORIGINS, stream)
            rows, first, origin = await pipe.execute()
        frames = [(_text(rid), fields[b"f"]) for rid, fields in rows or []]
        while len(rows or ()) == page:  # a long absence: read on, one page per round trip
            rows = await self.stream_after(stream, frames[-1][0], page)
            frames.extend(rows)
        return Replay(frames, _recovered(first, origin, after))

    async def advance_delivered(self, key: str, message_id: str) -> None:
        """Move a user's delivered cursor forward (never back)."""
        await self._advance(keys=[keys.account(key)], args=[message_id])

    async def settle(self, key: str, token_hash: str, written_upto: str) -> None:
        """A session has written every inbox DM up to ``written_upto`` (its replay is done): record it,
        and let DMs published to it from now on move the cursor (see ``_SETTLE``)."""
        await self._run(self._settle, [keys.account(key), keys.session(key)], [written_upto, token_hash])
