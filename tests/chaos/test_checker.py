"""Unit tests of the nemesis checker (tests/chaos/checker.py) on hand-made histories, no processes.

Ids are per stream since issue 15 (docs/protocol.md §7.1): two unrelated streams may hand out the same
id, so the checker must name a message by (stream, id) and never confuse the two.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from protocol import frames as f
from tests.chaos.checker import Checker, History, Sent, conversation_of, stream_of
from tests.chaos.nemesis import Config


class Verdict(Checker):
    """A checker over a history built by hand (the run's attributes, with stub clients)."""

    def __init__(self, users: list[str]) -> None:
        self.cfg = Config(seed=0)
        self.history = History()
        client = SimpleNamespace(node="gw0-0", positions={}, reconnects=0, duplicates=0)
        self.users = {u: SimpleNamespace(client=client) for u in users}  # type: ignore[misc]
        self.problems: list[str] = []
        self.known: list[str] = []
        self.stats: dict[str, Any] = {}

    def sent(self, sender: str, to: str, ack: str) -> Sent:
        body = f"{sender}:{to}:{ack}"
        sent = Sent(sender, to, body, ack=ack)
        self.history.sends[body] = sent
        return sent

    def got(self, user: str, sent: Sent) -> None:
        assert sent.ack is not None
        self.history.received[user].append(f.Message(id=sent.ack, from_=sent.sender, to=sent.to, body=sent.body))


def test_streams_are_named_by_owner() -> None:
    assert stream_of("Bob", "@alice") == ("dm", "bob")  # a DM is on the recipient's inbox
    assert stream_of("bob", "*") == ("*",)
    assert stream_of("bob", "#G0") == ("#", "g0")
    assert conversation_of("bob", "@alice") == conversation_of("alice", "@bob") == ("conv", "alice", "bob")


def test_same_id_in_two_streams_is_not_taken_for_the_other_message() -> None:
    """u3 got a broadcast numbered 100-0 but not the DM u2 sent it, also numbered 100-0 (by u3's own
    inbox clock).  By id alone the DM looks delivered; by (stream, id) it is lost."""
    v = Verdict(["u0", "u1", "u2", "u3"])
    dm = v.sent("u2", "@u3", "100-0")
    broadcast = v.sent("u0", "*", "100-0")
    for user in v.users:
        v.got(user, broadcast)
    assert not v._all_delivered()
    v.check()
    assert v.stats["lost"] == 1 and v.stats["id_clash"] == 0, v.stats
    assert any("never reached u3" in p for p in v.problems), v.problems
    v.got("u3", dm)
    assert v._all_delivered()


def test_same_id_in_unrelated_streams_is_clean_and_ordered_per_stream() -> None:
    v = Verdict(["u0", "u1", "u2", "u3"])
    dms = [v.sent("u0", "@u1", "100-0"), v.sent("u2", "@u3", "100-0"), v.sent("u1", "@u3", "200-2")]
    broadcast = v.sent("u1", "*", "100-0")
    v.got("u1", dms[0])
    v.got("u3", dms[1])
    v.got("u3", dms[2])
    for user in v.users:  # after a later DM on another stream: not out of order
        v.got(user, broadcast)
    assert v._all_delivered()
    v.check()
    assert not v.problems, v.problems
    assert v.stats["deliveries_checked"] == 3 + 4 and v.stats["out_of_order"] == 0


def test_one_id_twice_in_one_conversation_or_stream_is_a_clash() -> None:
    v = Verdict(["u0", "u1"])
    there, back = v.sent("u0", "@u1", "100-0"), v.sent("u1", "@u0", "100-0")  # both directions: must differ
    v.got("u1", there)
    v.got("u0", back)
    v.check()
    assert v.stats["id_clash"] == 1 and v.stats["lost"] == 0, v.stats
    assert any("id clash" in p for p in v.problems), v.problems


def test_order_is_checked_within_a_stream() -> None:
    v = Verdict(["u0", "u1"])
    first, second = v.sent("u0", "@u1", "100-0"), v.sent("u0", "@u1", "101-0")
    v.got("u1", second)
    v.got("u1", first)
    v.check()
    assert v.stats["out_of_order"] == 1, v.stats


def test_a_reply_numbered_below_what_its_sender_had_seen_is_caught() -> None:
    """u1 answers a DM it got as 500-0 (u1's inbox clock); the answer, on u0's clock, must sort after."""
    v = Verdict(["u0", "u1"])
    seen = v.sent("u0", "@u1", "500-0")
    ok, bad = v.sent("u1", "@u0", "500-1"), v.sent("u1", "@u0", "400-1")
    ok.floor = bad.floor = seen.ack
    for sent, user in ((seen, "u1"), (bad, "u0"), (ok, "u0")):
        v.got(user, sent)
    v.check()
    assert v.stats["below_floor"] == 1 and v.stats["out_of_order"] == v.stats["lost"] == 0, v.stats
    assert any("below floor" in p and "400-1" in p for p in v.problems), v.problems
