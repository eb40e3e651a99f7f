"""The presence_batch window: the configured seconds, stretched to keep a storm's writes bounded."""

from __future__ import annotations

import pytest

from gateway.fanout import batch_window


def test_few_sockets_keep_the_configured_window() -> None:
    assert batch_window(0.25, 100, 10_000) == 0.25
    assert batch_window(0.25, 2_500, 10_000) == 0.25  # exactly at the budget: 4 windows x 2,500 writes


def test_many_sockets_stretch_it_to_the_write_budget() -> None:
    window = batch_window(0.25, 10_000, 10_000)
    assert window == pytest.approx(1.0)
    assert 10_000 / window <= 10_000  # frames written per second stay within the budget
    assert batch_window(0.25, 40_000, 10_000) == pytest.approx(4.0)


def test_zero_budget_never_stretches() -> None:
    assert batch_window(0.25, 1_000_000, 0) == 0.25
