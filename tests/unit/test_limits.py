"""Per-IP token buckets: bursts, refill, a bounded table; IPv6 by /64; the fallback when Redis is away."""

from __future__ import annotations

from redis.asyncio import Redis

from common import keys
from gateway.limits import IpLimiter, SharedIpLimiter, ip_bucket
from gateway.pipeline import AutoPipeline
from tests.helpers import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_the_wait_then_refill() -> None:
    clock = Clock()
    limiter = IpLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.take("1.2.3.4") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("1.2.3.4") == 0.5  # one token comes back in half a second
    assert limiter.take("5.6.7.8") == 0  # another address has its own bucket
    clock.now += 0.5
    assert limiter.take("1.2.3.4") == 0
    clock.now += 100
    assert [limiter.take("1.2.3.4") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond


def test_zero_rate_means_unlimited_and_the_table_stays_bounded() -> None:
    assert all(IpLimiter(rate=0, burst=0).take("x") == 0 for _ in range(100))
    limiter = IpLimiter(rate=1, burst=1, max_ips=10)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 10


def test_ipv6_is_limited_by_its_64_and_mapped_ipv4_as_ipv4() -> None:
    assert ip_bucket("2001:db8:1:2:aaaa::1") == ip_bucket("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert ip_bucket("2001:db8:1:3::1") != ip_bucket("2001:db8:1:2::1")
    assert ip_bucket("::ffff:192.0.2.7") == "192.0.2.7" == ip_bucket("192.0.2.7")
    assert ip_bucket("/run/chinwag.sock") == "/run/chinwag.sock"


async def test_without_redis_the_shared_limiter_fails_open_to_this_gateways_bucket() -> None:
    """Redis unreachable: answers come at once from the local bucket (same rate and burst), not refusals."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    pipeline, redis = AutoPipeline(url, connect_timeout=0.5), Redis.from_url(url)
    try:
        limiter = SharedIpLimiter(redis, pipeline, keys.ip_connections, rate=1, burst=3)
        assert [await limiter.take("192.0.2.1") for _ in range(3)] == [0, 0, 0]
        assert await limiter.take("192.0.2.1") > 0  # the local bucket still limits
        assert limiter.fallbacks == 4
        unhealthy = SharedIpLimiter(redis, pipeline, keys.ip_connections, rate=1, burst=1, healthy=lambda: False)
        assert await unhealthy.take("192.0.2.1") == 0  # not even tried: Redis is known to be away
        assert unhealthy.fallbacks == 1
    finally:
        await pipeline.aclose()
        await redis.aclose()
