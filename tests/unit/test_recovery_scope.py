"""gateway/recovery.py Scope: which channels of a lost cluster shard mean what to replay (issue 15)."""

from __future__ import annotations

from gateway.recovery import Scope

KINDS = {
    "cw:{all}:c": ("broadcast", ""),
    "cw:{pres}:c": ("presence", ""),
    "cw:{gw:g1}:c": ("control", ""),
    "cw:{u:bob}:c": ("user", "bob"),
    "cw:{g:devs}:c": ("group", "devs"),
}


def test_a_shards_channels_add_up_to_what_is_replayed() -> None:
    scope = Scope()
    assert scope.empty
    scope.add({"cw:{gw:g1}:c"}, KINDS)
    assert scope.empty  # a control channel has nothing to replay
    scope.add({"cw:{u:bob}:c", "cw:{pres}:c"}, KINDS)
    scope.add({"cw:{g:devs}:c"}, KINDS)
    assert (scope.users, scope.groups, scope.presence, scope.broadcast, scope.everything) == (
        {"bob"}, {"devs"}, True, False, False)
    scope.add({"cw:{all}:c"}, KINDS)
    assert scope.broadcast and not scope.everything


def test_an_unknown_channel_replays_everything() -> None:
    scope = Scope()
    scope.add({"cw:{u:gone}:c"}, KINDS)
    assert scope.everything and not scope.empty
