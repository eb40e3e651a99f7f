"""Creating Redis command clients the same way everywhere."""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

# What "Redis is away" looks like to a caller: redis-py's own errors, the socket's, and a
# ``wait_for`` around a command running out.  Loops catch exactly these, back off and retry.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def connect_redis(url: str, *, max_connections: int = 64, pool_timeout: float = 5.0) -> Redis:
    """A pooled client that fails fast when Redis is away, and queues when it is merely busy.

    At most ``max_connections`` commands are in flight; more wait up to
    ``pool_timeout`` for a free connection (a burst of logins or sends is
    queued, not answered ``unavailable``).  One immediate retry covers the
    stale pooled socket left by a Redis restart; anything longer is the
    caller's backoff loop.  A timeout is not retried: the script may have run,
    and running a send twice would store it twice.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        health_check_interval=0,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


def redacted_url(url: str | None) -> str:
    """A Redis URL fit for logs and windows: any credentials (user and password) become ``***``."""
    if not url:
        return ""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
