"""Options of the randomized fault test (tests/chaos/test_nemesis.py)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nemesis", "randomized fault injection (tests/chaos/test_nemesis.py)")
    group.addoption("--nemesis-seed", type=int, default=None,
                    help="replay one seed instead of the CI seeds (also CHINWAG_NEMESIS_SEED)")
    group.addoption("--nemesis-duration", type=float, default=None, help="seconds of faults per seed")
