"""chinwag-loadtest's merge logic: log-bucketed histograms, per-stream accounting, worker slices.

Pure and exact: every expected value here is worked out by hand from the bucket layout
(values below 256 µs exact, then 128 buckets per power of two).
"""

from __future__ import annotations

import argparse
import random

import pytest

from chinwag.loadtest_histogram import LogHistogram, bucket_bounds, bucket_of
from chinwag.loadtest_measure import Recorder, Streams, cpu_usage
from chinwag.loadtest_workers import slices


def hist_of(values: list[int]) -> LogHistogram:
    h = LogHistogram()
    for v in values:
        h.record(v)
    return h


def test_small_values_have_a_bucket_each_and_large_ones_share_within_one_128th() -> None:
    assert [bucket_of(v) for v in (0, 1, 255)] == [0, 1, 255]
    assert bucket_bounds(bucket_of(256)) == (256, 257)
    assert bucket_bounds(bucket_of(511)) == (510, 511)
    assert bucket_bounds(bucket_of(512)) == (512, 515)
    assert bucket_bounds(bucket_of(1_000_000)) == (999_424, 1_003_519)
    for v in (256, 300, 4095, 4096, 123_456, 10**9):  # every value lies in its bucket's bounds
        low, high = bucket_bounds(bucket_of(v))
        assert low <= v <= high and (high - low + 1) * 128 <= low
    indexes = [bucket_of(v) for v in range(0, 70_000)]
    assert indexes == sorted(indexes)  # buckets are ordered like their values


def test_percentiles_by_nearest_rank() -> None:
    h = hist_of(list(range(1, 101)))  # 1..100 µs, all exact
    assert (h.percentile(50), h.percentile(90), h.percentile(99), h.percentile(100)) == (50, 90, 99, 100)
    assert h.percentile(0) == 1
    assert (h.total, h.min, h.max, h.mean()) == (100, 1, 100, 50.5)
    assert LogHistogram().percentile(99) is None and LogHistogram().mean() is None


def test_a_percentile_in_a_shared_bucket_is_its_highest_value_but_never_above_the_max() -> None:
    h = hist_of([1000, 1001, 1002])  # one bucket: 1000..1003
    assert h.percentile(50) == 1002  # the bucket's top (1003) capped at the largest value recorded
    h.record(5000)  # bucket 4992..5023
    assert h.percentile(50) == 1003
    assert h.percentile(100) == 5000


def test_merging_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    parts = [[rng.randrange(0, 50_000) for _ in range(n)] for n in (1000, 1, 0, 333)]
    merged = LogHistogram()
    for part in parts:
        merged.merge(hist_of(part))
    whole = hist_of([v for part in parts for v in part])
    assert merged.counts == whole.counts
    assert (merged.total, merged.sum, merged.min, merged.max) == (whole.total, whole.sum, whole.min, whole.max)
    assert merged.total == 1334
    for q in (50, 90, 99, 99.9, 100):
        assert merged.percentile(q) == whole.percentile(q)


def test_a_histogram_survives_the_trip_from_a_worker() -> None:
    h = hist_of([3, 3, 700, 90_000])
    back = LogHistogram.from_dict(h.to_dict())
    assert back.counts == {3: 2, bucket_of(700): 1, bucket_of(90_000): 1}
    assert (back.total, back.sum, back.min, back.max) == (4, 90_706, 3, 90_000)
    bad = h.to_dict()
    bad["total"] = 5
    with pytest.raises(ValueError, match="add up to 4"):
        LogHistogram.from_dict(bad)


def test_streams_count_duplicates_and_reordering_per_sender_and_receiver() -> None:
    s = Streams()
    arrivals = [(0, 7, 1), (0, 7, 2), (0, 7, 2),  # a duplicate
                (0, 7, 5), (0, 7, 3),  # 3 and 4 skipped, then 3 late: out of order
                (1, 7, 1), (0, 8, 1),  # other streams start at 1 on their own
                (0, 7, 3), (0, 7, 4), (0, 7, 0)]  # 3 again: duplicate; 4 late: out of order; 0 never sent
    assert [s.arrive(*a) for a in arrivals] == [True, True, False, True, True, True, True, False, True, False]
    assert (s.received, s.duplicated, s.out_of_order) == (7, 3, 2)
    assert s.gaps == {}  # every gap filled: nothing kept


def test_the_recorder_reads_only_its_run_and_exports_what_it_saw() -> None:
    rec = Recorder("abc")
    body = rec.body(sender=5)
    assert body.startswith("r=abc s=5 n=1 t=")
    assert rec.body(sender=5).startswith("r=abc s=5 n=2 ")
    rec.on_message(9, body)
    rec.on_message(9, body)
    rec.on_message(9, "r=zzz s=5 n=1 t=0")  # another run's
    rec.on_message(9, "hello")
    out = rec.export()
    assert (out["received"], out["duplicated"], out["out_of_order"]) == (1, 1, 0)
    assert out["hist"]["total"] == 1 and len(out["samples"]) == 1


def test_worker_slices_keep_pairs_and_groups_whole() -> None:
    assert slices(200, 2, 2) == [(0, 100), (100, 100)]
    assert slices(10, 3, 2) == [(0, 4), (4, 4), (8, 2)]
    assert slices(7, 2, 2) == [(0, 4), (4, 3)]  # the odd user out goes last, unpaired as in one process
    assert slices(25, 2, 10) == [(0, 10), (10, 15)]
    assert slices(1, 3, 1) == [(0, 1), (1, 0), (1, 0)]
    for clients, workers, unit in ((1000, 4, 2), (999, 7, 10), (5, 5, 1)):
        cut = slices(clients, workers, unit)
        assert sum(n for _, n in cut) == clients
        assert all(first % unit == 0 for first, _ in cut)
        assert [first for first, _ in cut] == [sum(n for _, n in cut[:w]) for w in range(workers)]


def test_a_generator_process_near_its_core_is_flagged() -> None:
    out = cpu_usage(10.0, [9.5, 2.0], {"gateway 1": 3.0, "gateway 2": 3.0, "redis": 2.0}, 80_000, (8000, 8000), 2)
    assert out["loadgen_cpu_fraction"] == 1.15 and out["loadgen_cpu_fraction_per_process"] == [0.95, 0.2]
    assert out["server_cpu_fraction"] == 0.8
    assert out["gateway_cpu_us_per_delivered"] == 75.0 and out["redis_cpu_us_per_delivered"] == 25.0
    assert out["generator_limited"] and "95% of its one core" in out["generator_limited_why"][0]


def test_a_short_rate_with_idle_servers_is_flagged_and_a_clean_run_is_not() -> None:
    servers = {"gateway 1": 1.0, "gateway 2": 1.0, "redis": 0.5}
    short = cpu_usage(10.0, [5.0, 5.0], servers, 50_000, (5000, 8000), 4)
    assert short["generator_limited"] and "5000 deliveries/s against 8000/s" in short["generator_limited_why"][0]
    clean = cpu_usage(10.0, [5.0, 5.0], servers, 80_000, (8000, 8000), 4)
    assert not clean["generator_limited"] and clean["generator_limited_why"] == []


def test_replicas_are_reported_apart_from_the_masters_redis_cpu() -> None:
    servers = {"gateway 1": 2.0, "redis a:1": 0.5, "redis b:2": 0.3, "replica c:3": 0.2, "replica d:4": 0.1}
    out = cpu_usage(10.0, [1.0], servers, 100_000, None, 8)
    assert out["redis_cpu_s"] == 0.8 and out["redis_shard_cpu_s"] == {"a:1": 0.5, "b:2": 0.3}
    assert out["redis_replica_cpu_s"] == {"c:3": 0.2, "d:4": 0.1}
    assert out["redis_cpu_us_per_delivered"] == 8.0 and out["redis_replica_cpu_us_per_delivered"] == 3.0
    one = cpu_usage(10.0, [1.0], {"gateway 1": 2.0, "redis": 0.5}, 100_000, None, 8)
    assert "redis_replica_cpu_s" not in one and "redis_replica_cpu_us_per_delivered" not in one


def test_server_env_overrides_the_load_settings() -> None:
    from chinwag.loadtest import LOAD_ENV, main, server_env

    args = argparse.Namespace(server_env=["CHINWAG_RATE_MESSAGES=1000000", "CHINWAG_X=a=b"])
    env = server_env(args)
    assert env["CHINWAG_RATE_MESSAGES"] == "1000000" and env["CHINWAG_X"] == "a=b"
    assert {k: v for k, v in env.items() if k not in ("CHINWAG_RATE_MESSAGES", "CHINWAG_X")} == {
        k: v for k, v in LOAD_ENV.items() if k != "CHINWAG_RATE_MESSAGES"}
    assert server_env(argparse.Namespace(server_env=[])) == LOAD_ENV
    for bad in (["dm", "--start-cluster", "1", "--server-env", "RATE=1"],
                ["dm", "--start-cluster", "1", "--server-env", "CHINWAG_RATE_MESSAGES"],
                ["dm", "--urls", "ws://x", "--server-env", "CHINWAG_RATE_MESSAGES=1"]):
        with pytest.raises(SystemExit):
            main(bad)


def test_unit_of_a_scenario() -> None:
    from chinwag.loadtest_workers import unit_of

    ns = argparse.Namespace
    assert unit_of(ns(scenario="dm", group_size=10)) == 2
    assert unit_of(ns(scenario="group", group_size=4)) == 4
    assert unit_of(ns(scenario="broadcast", group_size=10)) == 1


def test_redis_cluster_cpu_is_reported_per_shard_and_summed() -> None:
    servers = {"gateway 1": 2.0, "redis 127.0.0.1:20001": 0.5, "redis 127.0.0.1:20002": 0.25,
               "redis 127.0.0.1:20003": 0.25}
    out = cpu_usage(10.0, [1.0], servers, 10_000, None, 4)
    assert out["redis_shard_cpu_s"] == {"127.0.0.1:20001": 0.5, "127.0.0.1:20002": 0.25, "127.0.0.1:20003": 0.25}
    assert out["redis_cpu_s"] == 1.0 and out["redis_cpu_us_per_delivered"] == 100.0
    assert "redis_shard_cpu_s" not in cpu_usage(10.0, [1.0], {"gateway 1": 2.0, "redis": 1.0}, 10_000, None, 4)


def test_redis_shards_needs_a_started_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    from chinwag.loadtest import main

    with pytest.raises(SystemExit):
        main(["dm", "--urls", "ws://127.0.0.1:1", "--redis-shards", "3"])
    assert "only with --start-cluster" in capsys.readouterr().err
