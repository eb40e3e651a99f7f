"""The per-user budget for every request that is not a ``send``: history, who, group ops, uploads...

Sends have their token bucket inside the store-and-publish script; every other
request kind spends from a second bucket of the same kind (the same Lua, in
Redis, so the budget is one per user across every gateway and a client cannot
escape it by spreading its connections).  ``ping`` is answered without Redis
and costs nothing; binary upload chunks are paced by the upload protocol and
the quota instead.  Over budget, the request gets ``rate_limited`` and counts
toward the abuse close (4029) like a send over its rate.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from protocol.errors import RateLimited

from .pipeline import AutoPipeline
from .store import _RATE

# KEYS: the bucket ; ARGV: rate per second, burst -> {1} allowed | {-9, ms until a token}
_TAKE = _RATE + "return {1}\n"


class RequestLimiter:
    def __init__(
        self, redis: Redis | RedisCluster, rate: float, burst: int, pipeline: AutoPipeline | None = None
    ) -> None:
        self.rate = rate  # requests per second per user; 0 turns the limit off
        self.burst = max(1, burst)
        self.redis = redis
        self.pipeline = pipeline
        self._take: Any = redis.register_script(_TAKE)  # redis-py's script object: what evalsha takes

    async def take(self, ukey: str) -> None:
        """Spend one token of ``ukey``'s request bucket; RateLimited if there is none."""
        if self.rate <= 0:
            return
        args: list[Any] = [self.rate, self.burst]
        if self.pipeline is not None:
            result = await self.pipeline.evalsha(self._take, [keys.request_rate(ukey)], args)
        else:
            result = await self._take(keys=[keys.request_rate(ukey)], args=args)
        if int(result[0]) == -9:
            raise RateLimited("too many requests", retry_after=int(result[1]) / 1000)
