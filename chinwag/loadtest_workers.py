"""``chinwag-loadtest --workers N``: N generator processes, one report.

A Python generator process runs one event loop, so it can use one core at most, and at
about 15,000 DMs/s it runs out before two gateways do.  With ``--workers N`` the parent
starts N worker processes (``spawn``: no event loop is ever forked), gives each a
contiguous slice of the users (cut at a pair or group boundary, so each DM pair and each
group lives in one worker), and steps them through the run together over pipes:

    connect -> (settle) -> go (each its share of --rate) -> sent -> drain (its expected count)
    -> result (counts + latency histogram) -> close

Each worker measures its own clients (loss, duplicates and order per stream; latencies in a
log-bucketed histogram) and the parent adds the counts and merges the histograms, so the
report reads as one run.  The parent reads the CPU of every worker process and of the
servers over the same interval, and flags a run whose generator was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import secrets
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from chinwag.cluster import Cluster
from chinwag.loadtest_fleet import Fleet, Sender
from chinwag.loadtest_histogram import LogHistogram
from chinwag.loadtest_measure import ServerProbe, cpu_usage, measuring
from chinwag.loadtest_scenarios import counts_summary, idle_memory, plot, wanted_rates
from common.runtime import loop_factory

MESSAGING = ("dm", "broadcast", "group")
STEP_TIMEOUT = 120.0  # seconds a worker may take over one step beyond its own --timeout-bound work


def slices(clients: int, workers: int, unit: int) -> list[tuple[int, int]]:
    """(first, count) per worker: ``clients`` users cut into ``workers`` runs of whole ``unit``s
    (a DM pair, a group), as even as whole units allow; a worker may get none."""
    units, extra = divmod(clients, unit)
    per, rest = divmod(units, workers)
    out: list[tuple[int, int]] = []
    first = 0
    for w in range(workers):
        count = (per + (1 if w < rest else 0)) * unit
        if w == workers - 1:
            count += extra  # the users that make no whole unit go to the last worker, as in one process
        out.append((first, count))
        first += count
    return out


def unit_of(args: argparse.Namespace) -> int:
    if args.scenario == "dm":
        return 2
    return max(2, int(args.group_size)) if args.scenario == "group" else 1


# -- the worker process ---------------------------------------------------------


def worker_main(conn: Connection, args: argparse.Namespace, urls: list[str], run: str, first: int,
                count: int) -> None:
    """A worker process's entry point: serve the parent's steps until ``close``."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_serve(conn, Fleet(args, urls, run, first, count)))
    except BaseException as exc:  # reported to the parent, which ends the run with it
        try:
            conn.send(("error", f"worker {first}+{count}: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        conn.close()


async def _serve(conn: Connection, fleet: Fleet) -> None:
    args = fleet.args
    senders: list[Sender] = []
    try:
        while True:
            kind, payload = await asyncio.to_thread(conn.recv)
            if kind == "connect":
                connect_s = await fleet.connect(read=args.scenario in MESSAGING)
                if args.scenario == "dm":
                    senders = fleet.dm_pairs()
                elif args.scenario == "broadcast":
                    senders = fleet.broadcasters()
                elif args.scenario == "group":
                    senders = await fleet.make_groups()
                conn.send(("connected", {"held": fleet.held, "senders": len(senders),
                                         "login_errors": fleet.login_errors, "login_retries": fleet.login_retries,
                                         "error_kinds": fleet.error_kinds, "connect_s": connect_s}))
            elif kind == "go":
                rate, duration, t0 = payload
                fleet.rec.t0 = t0  # one time origin for every worker's --plot points (a machine-wide clock)
                if args.scenario in MESSAGING:
                    with measuring():
                        offered = await fleet.offer(rate, duration, senders)
                else:
                    offered = 0
                    await asyncio.sleep(duration)
                conn.send(("sent", {"offered": offered, "sent": fleet.rec.sent}))
            elif kind == "drain":
                with measuring():
                    await fleet.drain(functools.partial(int, payload))
                conn.send(("result", fleet.rec.export()))
            elif kind == "close":
                return
    finally:
        await fleet.close()


# -- the parent -------------------------------------------------------------------


class Workers:
    """The parent's side: start the workers, step them together, measure, merge."""

    def __init__(self, args: argparse.Namespace, urls: list[str], cluster: Cluster | None) -> None:
        self.args = args
        self.urls = urls
        self.run = secrets.token_hex(3)
        self.probe = ServerProbe.of(cluster)
        self.slices = slices(args.clients, args.workers, unit_of(args))
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.ps: list[psutil.Process] = []
        self.hist = LogHistogram()
        self.samples: list[tuple[float, float]] = []

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        for first, count in self.slices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, self.args, self.urls, self.run, first, count),
                               name=f"chinwag-loadtest-worker-{first}", daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
            self.ps.append(psutil.Process(proc.pid))

    async def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except OSError:
                pass
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
        for conn in self.conns:
            conn.close()

    async def step(self, kind: str, payloads: list[Any], reply: str) -> list[dict[str, Any]]:
        """Send one step to every worker and wait for each one's reply."""
        for conn, payload in zip(self.conns, payloads, strict=True):
            conn.send((kind, payload))
        return list(await asyncio.gather(*(asyncio.to_thread(self._recv, c, reply) for c in self.conns)))

    def _recv(self, conn: Connection, reply: str) -> dict[str, Any]:
        if not conn.poll(self.args.timeout + STEP_TIMEOUT):
            raise TimeoutError(f"a load-generator worker did not answer {reply!r} in time")
        try:
            kind, payload = conn.recv()
        except EOFError:
            raise RuntimeError("a load-generator worker exited") from None
        if kind == "error":
            raise RuntimeError(str(payload))
        if kind != reply:
            raise RuntimeError(f"a load-generator worker answered {kind!r}, not {reply!r}")
        result: dict[str, Any] = payload
        return result

    def _cpu(self) -> tuple[float, list[float], dict[str, float]]:
        cpu: list[float] = []
        for p in self.ps:
            try:
                t = p.cpu_times()
                cpu.append(float(t.user + t.system))
            except psutil.Error:
                cpu.append(0.0)
        return time.perf_counter(), cpu, self.probe.cpu()

    def _usage(self, before: tuple[float, list[float], dict[str, float]], deliveries: int,
               rates: tuple[float, float] | None) -> dict[str, Any]:
        after = self._cpu()
        gen = [a - b for a, b in zip(after[1], before[1], strict=True)]
        server = {k: v - before[2].get(k, 0.0) for k, v in after[2].items()}
        out = cpu_usage(after[0] - before[0], gen, server, deliveries, rates)
        out["loadgen_saturated"] = out["generator_limited"]
        return out

    async def run_scenario(self) -> dict[str, Any]:
        args = self.args
        rss0 = self.probe.rss()
        before = self._cpu()
        conn = await self.step("connect", [None] * len(self.conns), "connected")
        held = [c["held"] for c in conn]
        kinds: dict[str, int] = {}
        for c in conn:
            for k, n in c["error_kinds"].items():
                kinds[k] = kinds.get(k, 0) + n
        base: dict[str, Any] = {
            "workers": len(self.conns), "clients_per_worker": [c for _, c in self.slices],
            "connections_held": sum(held), "login_errors": sum(c["login_errors"] for c in conn),
            "login_retries": sum(c["login_retries"] for c in conn), "login_error_kinds": kinds}
        connect_s = max(c["connect_s"] for c in conn)
        if args.scenario == "login-storm":
            n = sum(held)
            return {"logins": n, **base, "total_s": round(connect_s, 3),
                    "logins_per_s": round(n / connect_s, 1) if connect_s else None, **self._usage(before, 0, None)}
        if args.scenario == "idle":
            await self.step("go", [(0.0, args.duration, time.perf_counter_ns())] * len(self.conns), "sent")
            return {**base, "connect_s": round(connect_s, 3), **self._usage(before, 0, None),
                    **idle_memory(self.probe, rss0, sum(held))}
        return await self._messages(base, conn, held)

    async def _messages(self, base: dict[str, Any], conn: list[dict[str, Any]], held: list[int]) -> dict[str, Any]:
        args = self.args
        senders = [c["senders"] for c in conn]
        if not sum(senders):
            raise RuntimeError(f"{args.scenario} has no senders: too few logged-in clients")
        await asyncio.sleep(args.settle)  # let the login burst's presence fan-out finish
        before = self._cpu()
        t0 = time.perf_counter_ns()
        sent = await self.step("go", [(args.rate * s / sum(senders), args.duration, t0) for s in senders], "sent")
        sent_w = [s["sent"] for s in sent]
        total = sum(sent_w)
        size = max(2, args.group_size)
        if args.scenario == "dm":
            expected = sent_w  # both ends of a pair live in one worker
            fan = 1
        elif args.scenario == "group":
            expected = [s * (size - 1) for s in sent_w]  # as does every member of a group
            fan = size - 1
        else:  # broadcast: everyone held hears every message but their own
            expected = [total * h - s for h, s in zip(held, sent_w, strict=True)]
            fan = sum(held) - 1
        results = await self.step("drain", expected, "result")
        for r in results:
            self.hist.merge(LogHistogram.from_dict(r["hist"]))
            self.samples += [(float(t), float(ms)) for t, ms in r["samples"]]
        self.samples.sort()
        out = counts_summary(args, sum(s["offered"] for s in sent), sum(expected), total,
                             sum(r["send_errors"] for r in results), sum(r["skipped"] for r in results),
                             sum(r["received"] for r in results), sum(r["duplicated"] for r in results),
                             sum(r["out_of_order"] for r in results), self.hist)
        out.update(base)
        out["delivered_per_worker"] = [r["received"] for r in results]
        out["histogram_count"] = self.hist.total
        out.update(self._usage(before, out["delivered"], wanted_rates(args, out["delivered_rate"], fan)))
        if args.scenario != "dm":
            out["recipients_per_message"] = fan
        if args.scenario == "group":
            out["groups"] = sum(senders)
        return out

    def plot(self, path: Path) -> None:
        plot(path, self.args.scenario, self.hist, self.samples)


async def run_workers(args: argparse.Namespace, urls: list[str], cluster: Cluster | None) -> tuple[dict[str, Any],
                                                                                                  Workers]:
    workers = Workers(args, urls, cluster)
    workers.start()
    try:
        return await workers.run_scenario(), workers
    finally:
        await workers.stop()
