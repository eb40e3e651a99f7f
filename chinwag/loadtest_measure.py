"""What ``chinwag-loadtest`` measures with: the server processes' CPU and memory (psutil; on a
Redis Cluster each master's CPU from its own ``INFO CPU``), the
per-message recorder (loss, duplicate and order accounting, latency histograms), the generator
and server CPU of a phase, and the progress line.  Kept apart from the scenarios
(chinwag/loadtest_scenarios.py) so each file holds one concern.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from chinwag.cluster import Cluster
from chinwag.loadtest_histogram import LogHistogram
from common.redis_cluster import ClusterNode


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def _redis_cpu(node: ClusterNode) -> float:
    """CPU seconds (user + system) a Redis node has used, by its own ``INFO CPU`` (0.0 if it does not answer)."""
    info = node.info("cpu")
    try:
        return float(info.get("used_cpu_sys", 0.0)) + float(info.get("used_cpu_user", 0.0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


@dataclass
class ServerProbe:
    """CPU time and RSS of the server processes a started cluster runs (empty for --urls).

    On a started Redis Cluster each master is a shard, named ``redis <host:port>``: its CPU
    is what the node reports (``used_cpu_sys + used_cpu_user``), so the shards' balance is
    seen per shard.  The masters are those at the start; a load test does not fail them over.
    Their replicas (``replica <host:port>``) are measured apart: a single Redis has none, so
    ``redis_cpu_s`` (masters only) compares with it, and the replicas' CPU is what a copy costs.
    """

    procs: dict[str, psutil.Process] = field(default_factory=dict)
    shards: dict[str, ClusterNode] = field(default_factory=dict)

    @classmethod
    def of(cls, cluster: Cluster | None) -> ServerProbe:
        probe = cls()
        if cluster is not None:
            for name, proc in cluster.procs:
                probe.procs[name] = psutil.Process(proc.pid)
            if cluster.redis_proc is not None:
                probe.procs["redis"] = psutil.Process(cluster.redis_proc.pid)
            if cluster.redis_cluster is not None:
                for node in cluster.redis_cluster.master_nodes():
                    probe.shards[f"redis {node.address}"] = node
                    for replica in cluster.redis_cluster.replicas_of(node):
                        probe.shards[f"replica {replica.address}"] = replica
        return probe

    def cpu(self) -> dict[str, float]:
        out = {name: _cpu(p) for name, p in self.procs.items()}
        out.update((name, _redis_cpu(node)) for name, node in self.shards.items())
        return out

    def rss(self) -> dict[str, int]:
        return {name: _rss(p) for name, p in self.procs.items()}


class Streams:
    """Loss, duplicate and order accounting per (receiver, sender) stream, in memory that grows
    only with the gaps (sequence numbers not yet seen below the highest seen), not with the run.

    Every sender numbers its messages 1, 2, 3, ...; a receiver expects each sender's next number.
    A number above it opens a gap (it is counted out of order if a gap is filled later); a number
    below it that fills no gap is a duplicate.
    """

    __slots__ = ("duplicated", "gaps", "next", "out_of_order", "received")

    def __init__(self) -> None:
        self.next: dict[tuple[int, int], int] = {}  # (receiver, sender) -> next expected seq
        self.gaps: dict[tuple[int, int], set[int]] = {}  # seqs below next not yet seen
        self.received = 0  # unique deliveries
        self.duplicated = 0
        self.out_of_order = 0  # arrived after a later message of the same sender to the same receiver

    def arrive(self, receiver: int, sender: int, seq: int) -> bool:
        """Account one delivery; False if it is a duplicate."""
        key = (receiver, sender)
        nxt = self.next.get(key, 1)
        if seq == nxt:
            self.next[key] = seq + 1
        elif seq > nxt:
            self.gaps.setdefault(key, set()).update(range(nxt, seq))
            self.next[key] = seq + 1
        else:
            gaps = self.gaps.get(key)
            if gaps is None or seq not in gaps:
                self.duplicated += 1
                return False
            gaps.discard(seq)
            if not gaps:
                del self.gaps[key]
            self.out_of_order += 1
        self.received += 1
        return True


@dataclass
class Recorder:
    """What one generator process saw: its sends, its clients' deliveries and their latencies.

    Latencies go into log-bucketed histograms (fixed memory, mergeable): ``hist`` for the
    whole run, ``phase`` for the current ramp step or progress window.  A bounded sample of
    (send time, latency) points is kept for ``--plot``'s scatter only.
    """

    run: str
    t0: int = field(default_factory=time.perf_counter_ns)
    sent: int = 0  # acked by the server
    send_errors: int = 0
    skipped: int = 0  # not offered: too many sends already in flight
    in_flight: int = 0
    streams: Streams = field(default_factory=Streams)
    seqs: dict[int, int] = field(default_factory=dict)  # sender -> last seq used
    hist: LogHistogram = field(default_factory=LogHistogram)  # latency, µs
    phase: LogHistogram = field(default_factory=LogHistogram)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (s since t0, ms), every stride-th
    stride: int = 1
    _until_sample: int = 1

    @property
    def received(self) -> int:
        return self.streams.received

    @property
    def duplicated(self) -> int:
        return self.streams.duplicated

    def body(self, sender: int) -> str:
        seq = self.seqs.get(sender, 0) + 1
        self.seqs[sender] = seq
        return f"r={self.run} s={sender} n={seq} t={time.perf_counter_ns()}"

    def on_message(self, receiver: int, body: str) -> None:
        now = time.perf_counter_ns()
        parts = body.split(" ")
        if len(parts) != 4 or parts[0][2:] != self.run:
            return  # not this run's
        sender, seq, t = int(parts[1][2:]), int(parts[2][2:]), int(parts[3][2:])
        if not self.streams.arrive(receiver, sender, seq):
            return
        us = (now - t) // 1000
        self.hist.record(us)
        self.phase.record(us)
        self._until_sample -= 1
        if self._until_sample <= 0:
            self._sample((t - self.t0) / 1e9, us / 1000)

    def _sample(self, at: float, ms: float) -> None:
        self.samples.append((at, ms))
        if len(self.samples) >= SAMPLES:  # keep every other point and sample half as often
            del self.samples[1::2]
            self.stride *= 2
        self._until_sample = self.stride

    def export(self) -> dict[str, Any]:
        """The counts and histogram a worker process sends to the parent (see loadtest_workers)."""
        s = self.streams
        return {"sent": self.sent, "send_errors": self.send_errors, "skipped": self.skipped,
                "received": s.received, "duplicated": s.duplicated, "out_of_order": s.out_of_order,
                "hist": self.hist.to_dict(), "samples": self.samples}


SAMPLES = 50_000  # points kept for the --plot scatter


@contextlib.contextmanager
def measuring() -> Iterator[None]:
    """No garbage-collector pauses in the generator while it measures: with a thousand clients
    and every latency kept, a full collection stalls the loop for tens of milliseconds, and
    that stall would be reported as server latency.  (The servers collect as usual.)"""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Progress:
    """A ``\\r`` status line on stderr, twice a second: a bar when the phase has a known length."""

    def __init__(self, label: str, line: Callable[[], str], enabled: bool, seconds: float | None = None) -> None:
        self.label, self.line, self.enabled, self.seconds = label, line, enabled, seconds
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            sys.stderr.write(f"\r{self.render(time.monotonic() - start)} {self.line()}\x1b[K")
            sys.stderr.flush()

    def render(self, elapsed: float, width: int = 20) -> str:
        """``[dm ########------------  40% 4s/10s]``, or ``[login 12s]`` for open-ended phases."""
        if not self.seconds:
            return f"[{self.label} {elapsed:.0f}s]"
        done = min(1.0, elapsed / self.seconds)
        filled = int(done * width)
        return f"[{self.label} {'#' * filled}{'-' * (width - filled)} {done:4.0%} {elapsed:.0f}s/{self.seconds:.0f}s]"

    def __enter__(self) -> Progress:
        if self.enabled:
            self.task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            sys.stderr.write("\n")


def cpu_usage(wall: float, generator_s: list[float], server_s: dict[str, float], deliveries: int,
              rates: tuple[float, float] | None = None, cores: int | None = None) -> dict[str, Any]:
    """Generator CPU next to server CPU for one measured phase, and whether the generator was the limit.

    ``generator_s`` is the CPU seconds of each generator process (one event loop each, so one
    core at most), ``server_s`` that of each server process by name (empty for ``--urls``).
    The generator was the limit when one of its processes nearly filled its core, when the
    machine was full and the generator held a third of it, or when fewer messages than
    wanted got through (``rates`` = achieved and wanted deliveries/s) while no server process was busy.
    """
    cores = cores or psutil.cpu_count() or 1
    wall = max(wall, 1e-9)
    per_proc = [s / wall for s in generator_s]
    gen = sum(per_proc)
    out: dict[str, Any] = {"wall_s": round(wall, 3), "loadgen_processes": len(per_proc),
                           "loadgen_cpu_fraction": round(gen, 3), "machine_cores": cores}
    if len(per_proc) > 1:
        out["loadgen_cpu_fraction_per_process"] = [round(x, 3) for x in per_proc]
    why: list[str] = []
    if per_proc and max(per_proc) > 0.9:
        why.append(f"a generator process used {max(per_proc):.0%} of its one core")
    if server_s:
        gw = sum(v for k, v in server_s.items() if k.startswith("gateway"))
        shards = {k.removeprefix("redis "): v for k, v in server_s.items() if k.startswith("redis ")}
        redis = server_s.get("redis", 0.0) + sum(shards.values())
        total = sum(server_s.values())
        out["server_cpu_s"] = {k: round(v, 3) for k, v in server_s.items()}
        out["gateway_cpu_s"] = round(gw, 3)
        out["redis_cpu_s"] = round(redis, 3)
        if shards:  # a Redis Cluster: each master's share, from its INFO CPU
            out["redis_shard_cpu_s"] = {k: round(v, 3) for k, v in shards.items()}
        replicas = {k.removeprefix("replica "): v for k, v in server_s.items() if k.startswith("replica ")}
        if replicas:  # not in redis_cpu_s: one Redis has no replica to compare with
            out["redis_replica_cpu_s"] = {k: round(v, 3) for k, v in replicas.items()}
        out["server_cpu_fraction"] = round(total / wall, 3)
        if deliveries:
            out["gateway_cpu_us_per_delivered"] = round(gw / deliveries * 1e6, 1)
            out["redis_cpu_us_per_delivered"] = round(redis / deliveries * 1e6, 1)
            if replicas:
                out["redis_replica_cpu_us_per_delivered"] = round(sum(replicas.values()) / deliveries * 1e6, 1)
            out["server_cpu_us_per_delivered"] = round(total / deliveries * 1e6, 1)
        if (gen + total / wall) > 0.9 * cores and gen > cores / 3:
            why.append(f"the machine's {cores} cores were full and the generator used {gen:.2f} of them")
        busiest = max(server_s.values()) / wall
        if rates and rates[0] < 0.95 * rates[1] and busiest < 0.8:
            why.append(f"{rates[0]:.0f} deliveries/s against {rates[1]:.0f}/s wanted while no "
                       f"server process used more than {busiest:.0%} of a core")
    out["generator_limited"] = bool(why)
    out["generator_limited_why"] = why
    return out
