"""The chaos verdict (tests/chaos/workload.py) knows a delivery by stream and id: with per-owner clocks
(issue 15) a DM and a broadcast can carry the same id, and that is neither a duplicate nor a loss."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import frames as f
from tests.chaos.workload import Outcome, Tally, Workload, exactly_once, measure, verdict


class _Client:
    def __init__(self, user: str) -> None:
        self.user, self.reconnects, self.duplicates = user, 0, 0


def _msg(mid: str, to: str, sender: str = "b") -> f.Message:
    return f.Message(id=mid, from_=sender, to=to, body="x", ts=1)


def _judge(received: list[f.Message], broadcasts: list[str], dms: list[tuple[str, str]]) -> None:
    tally = Tally()
    tally.broadcasts = broadcasts
    tally.sent["a"] = dms
    tally.received["a"] = received
    clients: Any = [_Client("a")]
    verdict(tally, clients, Workload(clients=1, dms=len(dms), broadcasts=len(broadcasts)))


def test_a_dm_and_a_broadcast_with_the_same_id_are_two_deliveries() -> None:
    _judge([_msg("1-0", "*"), _msg("1-0", "@a")], ["1-0"], [("b", "1-0")])


@pytest.mark.parametrize("received", [
    [_msg("1-0", "*"), _msg("1-0", "*"), _msg("2-0", "*")],  # duplicated
    [_msg("1-0", "*")],  # lost
    [_msg("2-0", "*"), _msg("1-0", "*")],  # reordered
    [_msg("1-0", "*"), _msg("1-0", "@a")],  # the DM's id is a broadcast's: it does not stand in for 2-0
], ids=["duplicated", "lost", "reordered", "stand-in"])
def test_duplicates_losses_and_reordering_fail(received: list[f.Message]) -> None:
    with pytest.raises(AssertionError):
        _judge(received, ["1-0", "2-0"], [])


def _measure(received: list[f.Message], dms: list[tuple[str, str]]) -> Outcome:
    tally = Tally()
    tally.sent["a"] = dms
    tally.received["a"] = received
    clients: Any = [_Client("a")]
    return measure(tally, clients, Workload(clients=1, dms=len(dms), broadcasts=0))


def test_a_retried_send_delivered_under_two_ids_is_unexpected_and_repeated_not_reordered() -> None:
    """The failover gap (docs/cluster.md): a first attempt delivered live, lost with its master, stored
    again by the retry under a new id.  The acked ids still arrived once and in order."""
    first = f.Message(id="1-0", from_="b", to="@a", body="dm 1", ts=1)
    again = f.Message(id="3-0", from_="b", to="@a", body="dm 1", ts=3)
    other = f.Message(id="2-0", from_="b", to="@a", body="dm 0", ts=2)
    outcome = _measure([other, first, again], [("b", "2-0"), ("b", "3-0")])
    assert (outcome.lost, outcome.duplicated, outcome.out_of_order) == (0, 0, 0)
    assert (outcome.unexpected, outcome.repeated) == (1, 1)
    with pytest.raises(AssertionError):
        exactly_once(outcome)  # received != sent
