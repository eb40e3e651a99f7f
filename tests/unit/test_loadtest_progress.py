"""chinwag-loadtest's progress bar (the scenarios themselves run in tests/integration/test_loadtest.py)."""

from __future__ import annotations

from chinwag.loadtest import Progress


def test_a_phase_of_known_length_shows_a_bar() -> None:
    bar = Progress("dm", str, True, seconds=10)
    assert bar.render(0) == "[dm --------------------   0% 0s/10s]"
    assert bar.render(4) == "[dm ########------------  40% 4s/10s]"
    assert bar.render(12) == "[dm #################### 100% 12s/10s]"  # the drain after the phase


def test_an_open_ended_phase_shows_the_time() -> None:
    assert Progress("login", str, True).render(3.2) == "[login 3s]"
