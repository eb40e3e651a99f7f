"""Randomized faults (Jepsen style) against a real cluster; see tests/chaos/nemesis.py.

CI runs a fixed set of seeds for a bounded time each.  Replay one seed with
``CHINWAG_NEMESIS_SEED=<seed>`` or ``--nemesis-seed <seed>``; run for longer
with ``python -m tests.chaos.nemesis --soak 30`` (docs/guarantees.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.nemesis import FAULTS, Config, run_once

CI_SEEDS = (1, 2, 3)
DURATION = 20.0  # seconds of faults per seed


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The CI seeds, or the one seed given by ``--nemesis-seed`` / ``CHINWAG_NEMESIS_SEED``."""
    if "seed" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--nemesis-seed", None) or os.environ.get("CHINWAG_NEMESIS_SEED")
        metafunc.parametrize("seed", [int(chosen)] if chosen else list(CI_SEEDS))


@pytest.mark.timeout(300)
async def test_random_faults_lose_leak_and_duplicate_nothing(
    seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    duration = request.config.getoption("--nemesis-duration", None) or DURATION
    stats, problems, _ = await run_once(Config(seed=seed, duration=duration), tmp_path)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
    # Not vacuous: real traffic was checked and the faults really happened.
    assert stats["acked"] >= 100 and stats["deliveries_checked"] >= 300, stats
    assert stats["acked_dm"] and stats["acked_broadcast"] and stats["acked_group"], stats
    assert stats["faults"] >= 8, stats
    assert len(stats["fault_kinds"]) >= len(FAULTS) - 3, stats  # nearly every kind, in 20 s
    assert stats["membership_ops"] >= 5 and stats["reconnects"] >= 2, stats
