"""Per-IP token buckets, in this gateway's memory.

Limits that concern a *user* live in Redis (the send bucket, the password
lockout) so they hold on every gateway; limits that concern a *connection's
source address* are enforced where the connection arrives.  The table is
bounded: the least recently seen addresses are forgotten first, so a flood of
distinct addresses cannot grow memory without limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


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
