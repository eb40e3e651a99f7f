"""Who is online, atomically: name claims, releases, gateway leases and reaping.

Every state change is one Lua script, so two gateways racing for a name see
exactly one winner, and a presence event is published in the same atomic step
as the change it reports.  Scripts take the time from Redis (``TIME``), so
gateways with skewed clocks agree on lease expiry.

Data (see common.keys): ``cw:online:z`` is the online display names (a sorted set, paged by
name with ZRANGEBYLEX, so no answer has to carry everyone);
``cw:sess:<key>`` says which gateway holds a name, with its session token;
``cw:gw:<node>:users`` lists the names one gateway holds; ``cw:gateways`` maps
each gateway to its lease expiry.  A gateway that stops renewing is reaped:
its names are freed and ``offline`` events published.

These scripts touch keys they compute from ``KEYS`` prefixes, so they need a
single Redis (or Sentinel pair), not Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from common.lua_json import Const, Text, json_expr
from protocol import control
from protocol import frames as f


def _presence(user: str, status: str) -> str:
    """Lua building the presence frame for the display name in ``user`` (protocol.frames.Presence)."""
    return json_expr(f.Presence, user=Text(user), status=Const(status))


# The old gateway closes the session whose token hash this is (protocol.control.Kick).
_KICK = json_expr(control.Kick, user=Text("ARGV[1]"), token=Text("held[2]"))

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: gateways ; ARGV: node, ttl_ms, mode ('register' | 'renew')
_LEASE = _NOW + """
if ARGV[3] == 'renew' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
return 1
"""

# KEYS: session, online, gateway users, gateways, account
# ARGV: key, display name, node, token hash, presence channel, key prefix, takeover token hash ('' = none),
#       how many online names to return (the first in name order, plus one to tell if there are more;
#       '0': none.  Returning everyone made each login O(online), a login storm O(N^2))
# -> {1, delivered cursor, online names, online count} | {2, ...} taken over | {0} taken | {-1} no lease
# The session starts with 'hold' set: until its gateway has written the inbox replay and
# settles it (gateway/store.py), DMs are still published to it but do not move the delivered cursor.
# A takeover moves the session to this gateway without presence events and tells
# the old gateway (on its control channel) to close the old socket.
_CLAIM = keys.lua_functions(keys.gateway_users, keys.gateway_channel) + """
if not redis.call('ZSCORE', KEYS[4], ARGV[3]) then
  return {-1}
end
local status = 1
local held = redis.call('HMGET', KEYS[1], 'gw', 'token')
if held[1] then
  if ARGV[7] == '' or held[2] ~= ARGV[7] then
    return {0}
  end
  status = 2
  redis.call('SREM', key_gateway_users(ARGV[6], held[1]), ARGV[1])
  redis.call('PUBLISH', key_gateway_channel(ARGV[6], held[1]), """ + _KICK + """)
end
redis.call('HSET', KEYS[1], 'gw', ARGV[3], 'token', ARGV[4], 'name', ARGV[2], 'hold', '1')
redis.call('SADD', KEYS[3], ARGV[1])
local cursor = redis.call('HGET', KEYS[5], 'delivered') or '0-0'
if status == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  redis.call('PUBLISH', ARGV[5], """ + _presence("ARGV[2]", "online") + """)
end
local limit = tonumber(ARGV[8])
if limit == 0 then
  return {status, cursor, {}, 0}
end
local names = redis.call('ZRANGEBYLEX', KEYS[2], '-', '+', 'LIMIT', 0, limit + 1)
return {status, cursor, names, redis.call('ZCARD', KEYS[2])}
"""

# KEYS: session, online, gateway users ; ARGV: key, node, token, presence channel -> 1 | 0
_RELEASE = """
local s = redis.call('HMGET', KEYS[1], 'gw', 'token', 'name')
if s[1] ~= ARGV[2] or s[2] ~= ARGV[3] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], s[3])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], """ + _presence("s[3]", "offline") + """)
return 1
"""

# KEYS: gateways, online ; ARGV: key prefix, presence channel, batch size, node ('' = every expired)
# -> {reaped gateway ids, freed names}
_REAP = _NOW + keys.lua_functions(keys.gateway_users, keys.session) + """
local prefix = ARGV[1]
local ids
if ARGV[4] ~= '' then
  ids = {ARGV[4]}
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[3]))
end
local freed = {}
for _, gw in ipairs(ids) do
  local ukey = key_gateway_users(prefix, gw)
  for _, member in ipairs(redis.call('SMEMBERS', ukey)) do
    local sk = key_session(prefix, member)
    local s = redis.call('HMGET', sk, 'gw', 'name')
    if s[1] == gw then
      redis.call('DEL', sk)
      redis.call('ZREM', KEYS[2], s[2])
      redis.call('PUBLISH', ARGV[2], """ + _presence("s[2]", "offline") + """)
      freed[#freed + 1] = s[2]
    end
  end
  redis.call('DEL', ukey)
  redis.call('ZREM', KEYS[1], gw)
end
return {ids, freed}
"""


# KEYS: gateways, online, gateway users ; ARGV: node, key prefix, presence channel, then (key, name, token hash)*
# -> {-1} no lease | one status per name: 1 free again and re-claimed (with 'hold' set, online published),
#    2 still held by this session, 0 held by another session (this gateway must close its socket)
# For a gateway that finds its lease was lost (reaped while paused or partitioned): takes back,
# in one atomic step, every name its open sockets still hold.
_RECLAIM = keys.lua_functions(keys.session) + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {-1}
end
local out = {}
for i = 4, #ARGV, 3 do
  local key, name, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local sk = key_session(ARGV[2], key)
  local held = redis.call('HMGET', sk, 'gw', 'token')
  if not held[1] then
    redis.call('HSET', sk, 'gw', ARGV[1], 'token', token, 'name', name, 'hold', '1')
    redis.call('SADD', KEYS[3], key)
    redis.call('ZADD', KEYS[2], 0, name)
    redis.call('PUBLISH', ARGV[3], """ + _presence("name", "online") + """)
    out[#out + 1] = 1
  elseif held[1] == ARGV[1] and held[2] == token then
    redis.call('SADD', KEYS[3], key)
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class OnlinePage:
    """A page of the online names, in code-point order.

    ``next`` (the last name of this page) continues after it, None when nothing follows;
    ``total`` counts everyone online, None when ``names`` is everyone.
    """

    names: list[str]
    total: int | None = None
    next: str | None = None


def _page(names: list[str], total: int, limit: int, after: str | None) -> OnlinePage:
    """``names`` is up to ``limit + 1`` names after ``after``: the extra one says more follow."""
    more = len(names) > limit
    names = names[:limit]
    whole = not more and after is None
    return OnlinePage(names, None if whole else total, names[-1] if more else None)


@dataclass(frozen=True, slots=True)
class Claim:
    """Result of a successful claim: where offline delivery resumes, and (a page of) who is online."""

    delivered: str
    online: OnlinePage
    took_over: bool = False  # the name was moved from another (presumed dead) connection


class NoLease(Exception):
    """The gateway's lease is gone (reaped or Redis restarted empty): register again."""


def token_hash(token: str) -> str:
    """What Redis keeps of a session token: a leaked Redis dump cannot take a name over."""
    return hashlib.sha256(token.encode()).hexdigest()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Registry:
    """The atomic operations on presence state; gateway and presence service share it."""

    def __init__(self, redis: Redis | RedisCluster, lease_ttl: float = 10.0) -> None:
        self.redis = redis
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self._lease = redis.register_script(_LEASE)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._reap = redis.register_script(_REAP)
        self._reclaim = redis.register_script(_RECLAIM)

    async def register_gateway(self, node_id: str) -> None:
        await self._lease(keys=[keys.GATEWAYS], args=[node_id, self.lease_ttl_ms, "register"])

    async def renew_lease(self, node_id: str) -> bool:
        """Extend the lease; False means it was reaped and must be registered again."""
        return bool(await self._lease(keys=[keys.GATEWAYS], args=[node_id, self.lease_ttl_ms, "renew"]))

    async def claim(
        self, key: str, name: str, node_id: str, token: str, takeover_token: str | None = None,
        online_limit: int = 1000,
    ) -> Claim | None:
        """Take ``name`` for a session on ``node_id``; None if someone else holds it.

        With ``takeover_token`` (the holder's session token) the name is taken over
        instead of refused.  Only hashes of tokens are stored and compared.
        ``Claim.online`` is the first ``online_limit`` online names (0: none, for
        clients that do not follow presence).
        """
        result = await self._claim(
            keys=[keys.session(key), keys.ONLINE, keys.gateway_users(node_id), keys.GATEWAYS, keys.account(key)],
            args=[
                key, name, node_id, token_hash(token), keys.PRESENCE_CHANNEL, keys.PREFIX,
                token_hash(takeover_token) if takeover_token else "", max(0, online_limit),
            ],
        )
        status = int(result[0])
        if status == -1:
            raise NoLease(node_id)
        if status == 0:
            return None
        online = _page([_s(n) for n in result[2]], int(result[3]), online_limit, None) if online_limit > 0 \
            else OnlinePage([])
        return Claim(delivered=_s(result[1]), online=online, took_over=status == 2)

    async def reclaim(self, node_id: str, sessions: list[tuple[str, str, str]]) -> list[int]:
        """Take back the names of ``(key, name, token hash)`` after a lost lease: one status each
        (1 re-claimed, 2 still ours, 0 someone else's); NoLease if the lease is not registered."""
        if not sessions:
            return []
        args: list[str] = [node_id, keys.PREFIX, keys.PRESENCE_CHANNEL]
        for session in sessions:
            args.extend(session)
        result = await self._reclaim(keys=[keys.GATEWAYS, keys.ONLINE, keys.gateway_users(node_id)], args=args)
        if result and int(result[0]) == -1:
            raise NoLease(node_id)
        return [int(status) for status in result]

    async def release(self, key: str, node_id: str, token: str) -> bool:
        """Free a name if this session still holds it; publishes ``offline``."""
        return bool(
            await self._release(
                keys=[keys.session(key), keys.ONLINE, keys.gateway_users(node_id)],
                args=[key, node_id, token_hash(token), keys.PRESENCE_CHANNEL],
            )
        )

    async def release_gateway(self, node_id: str) -> list[str]:
        """Free every name a gateway holds and drop its lease (clean shutdown)."""
        _, freed = await self._run_reap(node_id)
        return freed

    async def reap_expired(self, batch: int = 16) -> tuple[list[str], list[str]]:
        """Free the names of gateways whose lease expired: (gateway ids, names freed)."""
        return await self._run_reap("", batch)

    async def _run_reap(self, node_id: str, batch: int = 16) -> tuple[list[str], list[str]]:
        result: list[list[bytes]] = await self._reap(
            keys=[keys.GATEWAYS, keys.ONLINE], args=[keys.PREFIX, keys.PRESENCE_CHANNEL, batch, node_id]
        )
        ids, freed = result
        return [_s(i) for i in ids], [_s(n) for n in freed]

    async def online(self) -> list[str]:
        """Everyone online, in code-point order (for the admin window; clients get pages)."""
        names: list[Any] = await self.redis.zrange(keys.ONLINE, 0, -1)
        return [_s(n) for n in names]

    async def online_page(self, after: str | None, limit: int) -> OnlinePage:
        """Up to ``limit`` online names after ``after`` (None: from the first), in one round trip.

        Paging by name is stable: a name online during the whole walk is on exactly
        one page; one that comes or goes meanwhile may or may not be.
        """
        start = "-" if after is None else b"(" + after.encode()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrangebylex(keys.ONLINE, start, "+", start=0, num=limit + 1)
            pipe.zcard(keys.ONLINE)
            names, total = await pipe.execute()
        return _page([_s(n) for n in names], int(total), limit, after)

    async def gateways(self) -> dict[str, int]:
        """Every live gateway with its lease expiry (ms since the epoch, Redis clock)."""
        rows: list[Any] = await self.redis.zrange(keys.GATEWAYS, 0, -1, withscores=True)
        return {_s(node): int(score) for node, score in rows}

    async def holder(self, key: str) -> str | None:
        """The gateway holding a name, if any."""
        gw = await self.redis.hget(keys.session(key), "gw")
        return None if gw is None else _s(gw)
