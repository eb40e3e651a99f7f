"""What ``chinwag-loadtest`` measures with: latency percentiles, the server processes' CPU and
memory (psutil), the per-message recorder and the progress line.  Kept apart from the
scenarios (chinwag/loadtest.py) so each file holds one concern.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psutil

from chinwag.cluster import Cluster


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


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


@dataclass
class ServerProbe:
    """CPU time and RSS of the server processes a started cluster runs (empty for --urls)."""

    procs: dict[str, psutil.Process] = field(default_factory=dict)

    @classmethod
    def of(cls, cluster: Cluster | None) -> ServerProbe:
        probe = cls()
        if cluster is not None:
            for name, proc in cluster.procs:
                probe.procs[name] = psutil.Process(proc.pid)
            if cluster.redis_proc is not None:
                probe.procs["redis"] = psutil.Process(cluster.redis_proc.pid)
        return probe

    def cpu(self) -> dict[str, float]:
        return {name: _cpu(p) for name, p in self.procs.items()}

    def rss(self) -> dict[str, int]:
        return {name: _rss(p) for name, p in self.procs.items()}


@dataclass
class Recorder:
    run: str
    t0: int = field(default_factory=time.perf_counter_ns)
    seq: int = 0
    sent: int = 0  # acked by the server
    send_errors: int = 0
    skipped: int = 0  # not offered: too many sends already in flight
    in_flight: int = 0
    received: int = 0  # unique deliveries
    duplicated: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)  # (receiver, seq)
    send_times: list[float] = field(default_factory=list)  # seconds since t0, per delivery
    latencies: list[float] = field(default_factory=list)  # ms, per delivery

    def body(self) -> tuple[int, str]:
        self.seq += 1
        return self.seq, f"r={self.run} t={time.perf_counter_ns()} seq={self.seq}"

    def on_message(self, receiver: int, body: str) -> None:
        now = time.perf_counter_ns()
        parts = body.split(" ")
        if len(parts) != 3 or parts[0][2:] != self.run:
            return  # not this run's
        t, seq = int(parts[1][2:]), int(parts[2][4:])
        key = (receiver, seq)
        if key in self.seen:
            self.duplicated += 1
            return
        self.seen.add(key)
        self.received += 1
        self.send_times.append((t - self.t0) / 1e9)
        self.latencies.append((now - t) / 1e6)


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
