"""Capped exponential backoff with equal jitter, for every reconnect loop.

Equal, not full, jitter on purpose: full jitter (``uniform(0, delay)``) can draw a
delay near zero, so a fleet of gateways and clients losing Redis or a gateway at
once would retry some of their number at once, every round.  Half fixed, half
random keeps a floor under every wait and still spreads the retries out.
"""

from __future__ import annotations

import random

_RNG = random.Random()  # shared: seeding a Random per Backoff cost each client send an os.urandom call


class Backoff:
    """Delays of ``base * 2**n`` capped at ``cap``, half fixed and half random (equal jitter).

    Like redis-py's ``EqualJitterBackoff``: half the delay is fixed, half random, so
    many gateways reconnecting at once spread out without ever retrying instantly.
    """

    def __init__(self, base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or _RNG

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2**self.failures))
        self.failures = min(self.failures + 1, 30)
        return float(delay / 2 + self._rng.uniform(0, delay / 2))

    def reset(self) -> None:
        self.failures = 0
