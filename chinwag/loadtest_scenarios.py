"""The scenarios of ``chinwag-loadtest`` run in one process: dm (and its ramp), broadcast, group,
login-storm and idle, with the measurements each reports.  ``--workers N`` runs the same
scenarios over N processes (chinwag/loadtest_workers.py)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from chinwag.cluster import Cluster
from chinwag.loadtest_fleet import Fleet, Sender
from chinwag.loadtest_histogram import LogHistogram
from chinwag.loadtest_measure import Progress, ServerProbe, cpu_usage, measuring

Snapshot = tuple[float, float, dict[str, float]]  # wall, generator CPU, server CPU by process


def latency_ms(hist: LogHistogram) -> dict[str, float | None]:
    """p50, p90, p99 and max of a histogram of microseconds, in milliseconds."""
    pick = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "max_ms": 100.0}
    return {k: (round(v / 1000, 2) if (v := hist.percentile(q)) is not None else None) for k, q in pick.items()}


def plot(path: Path, scenario: str, hist: LogHistogram, samples: list[tuple[float, float]]) -> None:
    """A PNG of latency over time (a bounded sample of the deliveries) and its distribution (every one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.scatter([t for t, _ in samples], [ms for _, ms in samples], s=1, alpha=0.4)
    ax1.set_xlabel("send time (s)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"{scenario}: latency over time")
    buckets = hist.buckets()
    if buckets:
        ax2.hist([(lo + hi) / 2000 for lo, hi, _ in buckets], bins=100, weights=[n for _, _, n in buckets], log=True)
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("messages")
    ax2.set_title("latency distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class LoadTest(Fleet):
    """One run in this process: every client, one method per scenario, and what each reports."""

    def __init__(self, args: argparse.Namespace, urls: list[str], cluster: Cluster | None) -> None:
        super().__init__(args, urls, secrets.token_hex(3))
        self.cluster = cluster
        self.probe = ServerProbe.of(cluster)
        self.me = psutil.Process()

    # -- measurement ------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        t = self.me.cpu_times()
        return time.perf_counter(), float(t.user + t.system), self.probe.cpu()

    def usage(self, before: Snapshot, deliveries: int, rates: tuple[float, float] | None = None) -> dict[str, Any]:
        wall = time.perf_counter() - before[0]
        t = self.me.cpu_times()
        after = self.probe.cpu()
        server = {name: after[name] - before[2].get(name, 0.0) for name in after}
        out = cpu_usage(wall, [float(t.user + t.system) - before[1]], server, deliveries, rates)
        out["loadgen_saturated"] = out["generator_limited"]
        if self.probe.procs:
            rss = self.probe.rss()
            out["server_rss_mib"] = {name: round(v / 2**20, 1) for name, v in rss.items()}
            if self.held:  # the gateways' whole RSS (baseline included) per connection they hold
                gw_rss = sum(v for k, v in rss.items() if k.startswith("gateway"))
                out["gateway_rss_kib_per_connection"] = round(gw_rss / 1024 / self.held, 1)
        return out

    def progress_line(self) -> str:
        p99 = self.rec.phase.percentile(99)
        return (f"sent {self.rec.sent} delivered {self.rec.received} in-flight {self.rec.in_flight} "
                f"errors {self.rec.send_errors} p99(phase) {p99 if p99 is None else round(p99 / 1000, 1)} ms "
                f"loadgen cpu {self.me.cpu_percent():.0f}%")

    # -- scenarios ----------------------------------------------------------------

    async def dm(self) -> dict[str, Any]:
        await self.connect()
        await asyncio.sleep(self.args.settle)  # let the login burst's presence fan-out finish
        pairs = self.dm_pairs()
        if not pairs:
            raise RuntimeError("dm needs at least 2 logged-in clients")
        if self.args.ramp:
            return await self._ramp(pairs)
        before = self.snapshot()
        with Progress("dm", self.progress_line, self.args.progress, self.args.duration), measuring():
            offered = await self.offer(self.args.rate, self.args.duration, pairs)
            await self.drain(lambda: self.rec.sent)
        return self.summary(offered, self.rec.sent, before, 1)

    def _since(self, recv0: int, sent0: int) -> int:
        return recv0 + self.rec.sent - sent0

    async def _ramp(self, pairs: list[Sender]) -> dict[str, Any]:
        rate = float(self.args.rate)
        steps: list[dict[str, Any]] = []
        held: float | None = None
        for _ in range(self.args.ramp_steps):
            if time.monotonic() > self.deadline:
                break
            sent0, recv0 = self.rec.sent, self.rec.received
            self.rec.phase = LogHistogram()
            before = self.snapshot()
            with Progress(f"ramp {rate:.0f}/s", self.progress_line, self.args.progress, self.args.step_seconds), \
                    measuring():
                offered = await self.offer(rate, self.args.step_seconds, pairs)
                await self.drain(functools.partial(self._since, recv0, sent0))
            sent, received = self.rec.sent - sent0, self.rec.received - recv0
            lat = latency_ms(self.rec.phase)
            step = {"rate": round(rate), "offered": offered, "sent": sent, "delivered": received,
                    "delivery_ratio": round(received / offered, 4) if offered else 0.0, **lat,
                    **self.usage(before, received, (received / self.args.step_seconds, rate))}
            steps.append(step)
            p99 = lat["p99_ms"]
            ok = step["delivery_ratio"] >= 0.99 and p99 is not None and p99 <= self.args.max_p99_ms
            print(f"  ramp {rate:8.0f}/s  delivered {received}/{offered}  p99 {p99} ms  "
                  f"loadgen cpu {step['loadgen_cpu_fraction']:.0%}  {'held' if ok else 'FAILED'}", file=sys.stderr)
            if not ok:
                break
            held = rate
            rate *= self.args.ramp_factor
        result = self.summary(sum(s["offered"] for s in steps), self.rec.sent, None, 1)
        result.update({"ramp_steps": steps, "highest_rate_held": round(held) if held else None,
                       "max_p99_ms": self.args.max_p99_ms})
        return result

    async def broadcast(self) -> dict[str, Any]:
        await self.connect()
        return await self._fan_out("broadcast", self.broadcasters(), len(self.clients) - 1)  # all but the sender

    async def group(self) -> dict[str, Any]:
        await self.connect()
        size = max(2, self.args.group_size)
        senders = await self.make_groups()
        if not senders:
            raise RuntimeError(f"group needs at least --group-size ({size}) logged-in clients")
        # Every member but the sender, whose own copy the readers skip.
        return {**await self._fan_out("group", senders, size - 1), "groups": len(senders)}

    async def _fan_out(self, label: str, senders: list[Sender], recipients: int) -> dict[str, Any]:
        """Offer ``--rate`` messages/s over ``senders``; each should reach ``recipients`` readers."""
        await asyncio.sleep(self.args.settle)
        before = self.snapshot()
        with Progress(label, self.progress_line, self.args.progress, self.args.duration), measuring():
            offered = await self.offer(self.args.rate, self.args.duration, senders)
            await self.drain(lambda: self.rec.sent * recipients)
        result = self.summary(offered, self.rec.sent * recipients, before, recipients)
        result["recipients_per_message"] = recipients
        return result

    async def login_storm(self) -> dict[str, Any]:
        before = self.snapshot()
        elapsed = await self.connect(read=False)
        n = len(self.clients)
        return {"logins": n, "login_errors": self.login_errors, "login_retries": self.login_retries,
                "login_error_kinds": self.error_kinds, "total_s": round(elapsed, 3),
                "logins_per_s": round(n / elapsed, 1) if elapsed else None, "connections_held": n,
                **self.usage(before, 0)}

    async def idle(self) -> dict[str, Any]:
        rss0 = self.probe.rss()
        before = self.snapshot()
        elapsed = await self.connect(read=False)
        with Progress("idle", lambda: f"holding {self.held} connections", self.args.progress,
                      self.args.duration):
            await asyncio.sleep(min(self.args.duration, max(0.0, self.deadline - time.monotonic())))
        result: dict[str, Any] = {"connections_held": self.held, "login_errors": self.login_errors,
                                  "login_retries": self.login_retries,
                                  "connect_s": round(elapsed, 3), **self.usage(before, 0)}
        result.update(idle_memory(self.probe, rss0, self.held))
        return result

    def summary(self, offered: int, expected: int, before: Snapshot | None, fan: int) -> dict[str, Any]:
        """The run's counts and latency, and (``before`` given) its CPU; ``fan`` is deliveries per message."""
        r = self.rec
        out = counts_summary(self.args, offered, expected, r.sent, r.send_errors, r.skipped, r.received,
                             r.duplicated, r.streams.out_of_order, r.hist)
        out.update({"connections_held": len(self.clients), "login_errors": self.login_errors,
                    "login_retries": self.login_retries, "login_error_kinds": self.error_kinds})
        if before is not None:
            out.update(self.usage(before, r.received, wanted_rates(self.args, out["delivered_rate"], fan)))
        return out

    def plot(self, path: Path) -> None:
        plot(path, self.args.scenario, self.rec.hist, self.rec.samples)


def counts_summary(args: argparse.Namespace, offered: int, expected: int, sent: int, send_errors: int,
                   skipped: int, received: int, duplicated: int, out_of_order: int,
                   hist: LogHistogram) -> dict[str, Any]:
    """The message counts and latency of a run, from one process's recorder or several merged."""
    wall = args.duration
    return {
        "offered": offered, "offered_rate": round(offered / wall, 1) if wall else None,
        "sent": sent, "send_errors": send_errors, "skipped_in_flight_cap": skipped,
        "expected_deliveries": expected, "delivered": received,
        "delivered_rate": round(received / wall, 1) if wall else None,
        "lost": max(0, expected - received), "duplicated": duplicated, "out_of_order": out_of_order,
        **latency_ms(hist),
    }


def wanted_rates(args: argparse.Namespace, delivered_rate: float | None, fan: int) -> tuple[float, float] | None:
    """(achieved, wanted) deliveries/s: ``--rate`` messages/s, ``fan`` deliveries each."""
    return (delivered_rate, args.rate * fan) if delivered_rate is not None else None


def idle_memory(probe: ServerProbe, rss0: dict[str, int], held: int) -> dict[str, Any]:
    """Each gateway's RSS growth per connection it holds (round-robin placement by user number)."""
    if not probe.procs:
        return {}
    rss1 = probe.rss()
    per_gw: dict[str, Any] = {}
    gws = sorted(k for k in rss1 if k.startswith("gateway"))
    for i, name in enumerate(gws):
        conns = sum(1 for j in range(held) if j % len(gws) == i)
        delta = rss1[name] - rss0.get(name, 0)
        per_gw[name] = {"connections": conns, "rss_before_mib": round(rss0.get(name, 0) / 2**20, 1),
                        "rss_after_mib": round(rss1[name] / 2**20, 1),
                        "rss_kib_per_connection": round(delta / 1024 / conns, 2) if conns else None}
    out: dict[str, Any] = {"gateways": per_gw}
    if held:
        out["rss_kib_per_connection"] = round(sum(rss1[g] - rss0.get(g, 0) for g in gws) / 1024 / held, 2)
    return out
