"""Presence partitions (common/keys.py): the channels' hash tags spread them over the cluster's slots.

A sharded channel lives on the master that owns its slot.  With one presence channel (or tags that
happen to hash close together) one master would carry every presence event; the tags are chosen so
that however the 16384 slots are split into equal ranges over the masters, each gets its share.
"""

from __future__ import annotations

import collections

import pytest
from redis.crc import key_slot as redis_key_slot

from common import keys


def _masters(n: int) -> list[range]:
    """How ``redis-cli --cluster create`` splits the slots over ``n`` masters (equal ranges, in order)."""
    per = keys.CLUSTER_SLOTS / n
    bounds = [round(per * i) for i in range(n)] + [keys.CLUSTER_SLOTS]
    return [range(bounds[i], bounds[i + 1]) for i in range(n)]


def test_the_written_out_channels_are_the_computed_ones() -> None:
    assert keys.PRESENCE_CHANNELS == keys.presence_channels()
    assert len(keys.PRESENCE_CHANNELS) == keys.PRESENCE_PARTITIONS == len(set(keys.PRESENCE_CHANNELS))


def test_key_slot_is_redis_clusters() -> None:
    for key in (*keys.PRESENCE_CHANNELS, keys.session("bob"), "plain", "{}x", "a{}{b}", "{ünï}:x", keys.ONLINE):
        assert keys.key_slot(key) == redis_key_slot(key.encode()), key


def test_each_channel_sits_in_its_own_slice_of_the_slots() -> None:
    width = keys.CLUSTER_SLOTS // keys.PRESENCE_PARTITIONS
    slots = [keys.key_slot(ch) for ch in keys.PRESENCE_CHANNELS]
    assert [slot // width for slot in slots] == list(range(keys.PRESENCE_PARTITIONS)), slots


@pytest.mark.parametrize("masters", [1, 2, 3, 4, 5, 6, 8])
def test_every_master_gets_its_share_of_the_channels(masters: int) -> None:
    ranges = _masters(masters)
    counts = collections.Counter(next(i for i, r in enumerate(ranges) if keys.key_slot(ch) in r)
                                 for ch in keys.PRESENCE_CHANNELS)
    share = keys.PRESENCE_PARTITIONS / masters
    assert sorted(counts) == list(range(masters))
    assert all(abs(counts[i] - share) <= 1 for i in range(masters)), (counts, share)


def test_three_masters_get_about_a_third_each() -> None:
    counts = sorted(collections.Counter(
        next(i for i, r in enumerate(_masters(3)) if keys.key_slot(ch) in r) for ch in keys.PRESENCE_CHANNELS
    ).values())
    assert counts == [5, 5, 6]


def test_a_user_always_gets_the_same_partition_and_users_spread_over_all() -> None:
    users = [f"user{i}" for i in range(3200)]
    assert [keys.presence_channel(u) for u in users] == [keys.presence_channel(u) for u in users]
    counts = collections.Counter(keys.presence_channel(u) for u in users)
    assert set(counts) == set(keys.PRESENCE_CHANNELS)
    assert min(counts.values()) > 0.6 * 200 and max(counts.values()) < 1.4 * 200, counts
