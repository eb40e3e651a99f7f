"""Per-IP token buckets: bursts, refill, a bounded table."""

from __future__ import annotations

from gateway.limits import IpLimiter


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
