"""chinwag-loadtest smoke runs: correctness of what it reports, never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chinwag.cluster import Cluster
from chinwag.loadtest_measure import ServerProbe
from common.redis_cluster import RedisCluster
from tests.helpers import ROOT


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "chinwag.loadtest", *args, "--timeout", "60", "--no-progress", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_dm_smoke_delivers_everything_once(tmp_path: Path) -> None:
    result = _run(tmp_path, "dm", "--start-cluster", "2", "--clients", "10", "--rate", "200", "--duration", "3")
    assert result["sent"] > 0
    assert result["send_errors"] == 0
    assert result["delivered"] == result["sent"]
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["connections_held"] == 10
    assert result["p99_ms"] is not None
    assert "gateway_cpu_s" in result


def test_login_storm_smoke(tmp_path: Path) -> None:
    result = _run(tmp_path, "login-storm", "--start-cluster", "2", "--clients", "50")
    assert result["logins"] == 50
    assert result["login_errors"] == 0
    assert result["total_s"] > 0


def test_broadcast_smoke_reaches_everyone_once(tmp_path: Path) -> None:
    result = _run(tmp_path, "broadcast", "--start-cluster", "2", "--clients", "8", "--rate", "10", "--duration", "2")
    assert result["sent"] > 0
    assert result["recipients_per_message"] == 7  # everyone but the sender
    assert result["delivered"] == result["sent"] * 7
    assert result["lost"] == 0 and result["duplicated"] == 0


def test_idle_smoke_reports_memory_per_connection(tmp_path: Path) -> None:
    result = _run(tmp_path, "idle", "--start-cluster", "1", "--clients", "30", "--duration", "1", "--presence", "off")
    assert result["presence"] == "off"
    assert result["connections_held"] == 30
    assert result["gateways"]["gateway 1"]["connections"] == 30
    assert result["rss_kib_per_connection"] is not None


def test_group_smoke_reaches_every_member_once(tmp_path: Path) -> None:
    result = _run(tmp_path, "group", "--start-cluster", "2", "--clients", "12", "--group-size", "4",
                  "--rate", "60", "--duration", "2")
    assert result["groups"] == 3 and result["recipients_per_message"] == 3
    assert result["sent"] > 0 and result["send_errors"] == 0
    assert result["delivered"] == result["sent"] * 3
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["gateway_rss_kib_per_connection"] > 0


def test_two_worker_processes_merge_into_one_report(tmp_path: Path) -> None:
    """--workers 2 against a real cluster: each worker owns half the pairs, and the parent's
    totals are the workers' added up (the histogram's count included), with nothing lost."""
    result = _run(tmp_path, "dm", "--start-cluster", "2", "--clients", "8", "--rate", "100", "--duration", "2",
                  "--workers", "2", "--settle", "0.5")
    assert result["workers"] == 2 and result["clients_per_worker"] == [4, 4]
    assert result["connections_held"] == 8 and result["login_errors"] == 0
    assert result["sent"] > 0 and result["send_errors"] == 0
    per_worker = result["delivered_per_worker"]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker)
    assert result["delivered"] == sum(per_worker) == result["histogram_count"] == result["sent"]
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["out_of_order"] == 0
    assert result["p50_ms"] is not None and result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["loadgen_processes"] == 2 and len(result["loadgen_cpu_fraction_per_process"]) == 2
    assert result["loadgen_cpu_fraction"] > 0 and result["gateway_cpu_s"] > 0
    assert isinstance(result["generator_limited"], bool)


def test_idle_smoke_with_presence_on_holds_every_connection(tmp_path: Path) -> None:
    # The idle clients (chinwag/loadtest_idle.py) read and drop presence_batch frames; two
    # worker processes, so the merged report counts both slices.
    result = _run(tmp_path, "idle", "--start-cluster", "1", "--clients", "30", "--duration", "1",
                  "--presence", "batched", "--workers", "2")
    assert result["presence"] == "batched"
    assert result["connections_held"] == 30
    assert result["login_errors"] == 0
    assert result["gateways"]["gateway 1"]["connections"] == 30
    assert result["rss_kib_per_connection"] is not None


def test_server_probe_reads_each_cluster_masters_cpu(redis_cluster: RedisCluster) -> None:
    """--redis-shards: each master's CPU comes from its own INFO CPU, and grows with the work it does;
    the replicas are read too, under their own names (one Redis has none to compare with)."""
    probe = ServerProbe.of(Cluster(redis_cluster=redis_cluster))
    masters = {f"redis {m.address}" for m in redis_cluster.master_nodes()}
    replicas = {f"replica {r.address}" for m in redis_cluster.master_nodes() for r in redis_cluster.replicas_of(m)}
    assert len(replicas) == len(masters)
    before = probe.cpu()
    assert set(before) == masters | replicas and all(v > 0 for v in before.values())
    busy = redis_cluster.master_nodes()[0]
    for _ in range(200):
        busy.ask("INFO", "all")
    after = probe.cpu()
    assert after[f"redis {busy.address}"] > before[f"redis {busy.address}"]


def test_dm_smoke_on_a_redis_cluster_reports_cpu_per_shard(tmp_path: Path) -> None:
    result = _run(tmp_path, "dm", "--start-cluster", "2", "--redis-shards", "3", "--clients", "10", "--rate", "200",
                  "--duration", "3")
    assert result["redis_shards"] == 3
    assert result["delivered"] == result["sent"] > 0 and result["lost"] == 0
    assert len(result["redis_shard_cpu_s"]) == 3
    assert result["redis_cpu_s"] == pytest.approx(sum(result["redis_shard_cpu_s"].values()), abs=0.01)
    assert len(result["redis_replica_cpu_s"]) == 3 and result["redis_replica_cpu_us_per_delivered"] > 0
