"""Per-IP token buckets: one per address in Redis, shared by every gateway.

Connection attempts and login attempts per source address are limited
cluster-wide: :class:`SharedIpLimiter` takes a token from a bucket in Redis
(one Lua call, timed by Redis's clock, so every gateway spends from the same
bucket however the load balancer spreads an address's connections).  An IPv6
address is limited by its /64, the block one subscriber is normally given, so
rotating through it does not buy new buckets.

When Redis cannot answer (unreachable, stalled, or the gateway's pub/sub
connection to it not healthy), the limiter **fails open to a local bucket**
(:class:`IpLimiter`, this gateway's memory, the same rate and burst): an
address then gets at most that budget per gateway, as before this was
cluster-wide, and new connections are not refused (or delayed) just because
Redis is away.  The local table is bounded: the least recently seen addresses
are forgotten first, so a flood of distinct addresses cannot grow memory
without limit; Redis's buckets expire once refilled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common.redis import REDIS_ERRORS

from .pipeline import AutoPipeline

log = logging.getLogger("chinwag.limits")

# A token bucket: KEYS[1] the bucket, ARGV[1] tokens per second, ARGV[2] the burst.
# Returns 0 when a token was taken, else the milliseconds until one is available.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local since = math.max(0, now - (tonumber(b[2]) or now))
local tokens = math.min(burst, (tonumber(b[1]) or burst) + since * rate)
if tokens < 1 then
  return math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return 0
"""



def ip_bucket(ip: str) -> str:
    """The address a limit applies to: IPv4 as is, IPv6 by its /64 (an IPv4-mapped one as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # a unix socket path or the like: as given
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class IpLimiter:
    def __init__(
        self, rate: float, burst: int, max_ips: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate  # tokens per second; 0 turns the limit off
        self.burst = burst
        self.max_ips = max_ips
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # ip -> (tokens, when)

    def take(self, ip: str) -> float:
        """Spend a token for ``ip``; returns 0 if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, when = self._buckets.pop(ip, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1:
            self._buckets[ip] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[ip] = (tokens - 1, now)
        while len(self._buckets) > self.max_ips:
            self._buckets.popitem(last=False)
        return 0.0

    def __len__(self) -> int:
        return len(self._buckets)


class SharedIpLimiter:
    """A per-address token bucket in Redis shared by every gateway, with a local fallback.

    The script runs through ``pipeline`` (the gateway's auto-pipelined
    connection: a reconnect storm costs a few writes, not a pool checkout
    each); ``redis`` only registers it.  ``key`` names an address's bucket
    (common/keys.py); ``healthy`` says whether Redis is worth asking (else the
    local bucket answers at once); ``timeout`` bounds the wait for Redis on the
    connection path.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        pipeline: AutoPipeline,
        key: Callable[[str], str],
        rate: float,
        burst: int,
        healthy: Callable[[], bool] = lambda: True,
        timeout: float = 1.0,
        local: IpLimiter | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.key = key
        self.rate = rate
        self.burst = burst
        self.healthy = healthy
        self.timeout = timeout
        self.local = local or IpLimiter(rate, burst)
        self.fallbacks = 0  # answers the local bucket gave because Redis could not
        self._script: Any = redis.register_script(_TAKE)  # called through the pipeline by SHA
        self._failing = False

    async def take(self, ip: str) -> float:
        """Spend a token for ``ip``; returns 0 if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        bucket = ip_bucket(ip)
        if self.healthy():
            try:
                args: list[Any] = [repr(float(self.rate)), int(self.burst)]
                wait_ms = await asyncio.wait_for(
                    self.pipeline.evalsha(self._script, [self.key(bucket)], args), self.timeout
                )
                if self._failing:
                    self._failing = False
                    log.info("per-IP limits are checked in Redis again")
                return int(wait_ms) / 1000
            except REDIS_ERRORS as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("per-IP limits not checked in Redis (%s); using this gateway's own until it answers",
                                type(exc).__name__)
        self.fallbacks += 1
        return self.local.take(bucket)
