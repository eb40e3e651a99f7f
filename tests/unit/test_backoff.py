from __future__ import annotations

import random

from common.backoff import Backoff


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(base=0.1, cap=2.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert all(0.05 - 1e-9 <= d <= 2.0 for d in delays)
    assert delays[0] <= 0.1 and max(delays) > 1.0  # grew
    assert all(d >= 1.0 for d in delays[6:])  # at the cap, never less than half of it
    b.reset()
    assert b.next_delay() <= 0.1


def test_jitter_spreads_retries() -> None:
    delays = {Backoff(base=1, cap=1, rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(delays) == 20 and min(delays) >= 0.5 and max(delays) <= 1.0


def test_backoffs_without_their_own_rng_still_spread() -> None:
    """They share one generator (cheap to create), but do not share delays."""
    delays = {Backoff(base=1, cap=1).next_delay() for _ in range(20)}
    assert len(delays) == 20 and min(delays) >= 0.5 and max(delays) <= 1.0
