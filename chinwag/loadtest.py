"""``chinwag-loadtest``: drive real WebSocket clients against gateways and measure.

    chinwag-loadtest dm --start-cluster 2 --clients 100 --rate 1000 --duration 10
    chinwag-loadtest dm --urls ws://h:9001,ws://h:9002 --ramp --max-p99-ms 250
    chinwag-loadtest broadcast --start-cluster 2 --clients 300 --rate 20 --duration 10
    chinwag-loadtest group --start-cluster 2 --clients 200 --group-size 10 --rate 500
    chinwag-loadtest login-storm --start-cluster 2 --clients 1000
    chinwag-loadtest idle --start-cluster 1 --clients 2000 --duration 5

Every client is a :class:`client.chat.ChatClient`.  Each message body carries
the run id, the sender's ``perf_counter_ns`` and a sequence number
(``r=<run> t=<ns> seq=<n>``), so latency is measured in this one process and
losses and duplicates are counted by sequence number.  With ``--start-cluster``
the server processes' CPU time and RSS are measured with psutil too.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from chinwag.cluster import Cluster, free_base_port
from chinwag.loadtest_measure import Progress, Recorder, ServerProbe, measuring, percentile
from client.chat import ChatClient
from common.runtime import loop_factory
from protocol import frames as f
from protocol.errors import Unavailable

# Server settings for a load test: no per-user or per-IP limits, cheap argon2id.
LOAD_ENV = {
    "CHINWAG_RATE_MESSAGES": "0",
    "CHINWAG_IP_CONNECTIONS": "0",
    "CHINWAG_IP_LOGINS": "0",
    "CHINWAG_ARGON2_MEMORY_KIB": "1024",
    "CHINWAG_ARGON2_TIME_COST": "1",
    "CHINWAG_LOG_LEVEL": "WARNING",
}
PASSWORD = "loadtest-pw"


class LoadTest:
    """One run: the clients, and one method per scenario (dm, broadcast, group, login-storm, idle).

    Over 300 lines on purpose: the scenarios share the clients, the recorder and the
    pacing, and each reads best next to the others it is compared with.
    """

    def __init__(self, args: argparse.Namespace, urls: list[str], cluster: Cluster | None) -> None:
        self.args = args
        self.urls = urls
        self.cluster = cluster
        self.run = secrets.token_hex(3)
        self.rec = Recorder(self.run)
        self.clients: list[ChatClient] = []
        self.readers: list[asyncio.Task[None]] = []
        self.probe = ServerProbe.of(cluster)
        self.me = psutil.Process()
        self.login_errors = 0
        self.error_kinds: dict[str, int] = {}  # every failed login attempt, by exception
        self.login_retries = 0
        self.deadline = time.monotonic() + args.timeout

    def user(self, i: int) -> str:
        return f"lt{self.run}u{i}"

    # -- clients ---------------------------------------------------------------

    async def connect(self, n: int, read: bool = True) -> float:
        """Log in n users spread round-robin over the URLs (bounded concurrency); returns seconds taken."""
        sem = asyncio.Semaphore(self.args.concurrency)
        slots: list[ChatClient | None] = [None] * n

        async def one(i: int) -> None:
            async with sem:
                url = self.urls[i % len(self.urls)]
                for attempt in range(self.args.login_attempts):
                    try:
                        slots[i] = await ChatClient.open([url], self.user(i), PASSWORD, reconnect=False,
                                                         open_timeout=30, request_timeout=60,
                                                         presence=self.args.presence)
                        return
                    except Exception as exc:
                        kind = f"{type(exc).__name__}: {exc}"[:120]
                        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
                        if not isinstance(exc, Unavailable) or attempt + 1 == self.args.login_attempts:
                            self.login_errors += 1
                            return
                        self.login_retries += 1  # the server said "try again later" (close 1013): a client would
                        await asyncio.sleep(0.05 * 2**attempt)

        started = time.perf_counter()
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        with Progress("login", lambda: f"logged in {sum(c is not None for c in slots)}/{n} "
                      f"errors {self.login_errors}", self.args.progress):
            await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, self.deadline - time.monotonic()))
        elapsed = time.perf_counter() - started
        self.clients = [c for c in slots if c is not None]
        if read:
            self.readers = [asyncio.create_task(self._read(i, c)) for i, c in enumerate(self.clients)]
        return elapsed

    async def _read(self, index: int, client: ChatClient) -> None:
        me = client.user
        async for event in client.events():
            if isinstance(event, f.Message) and event.from_ != me:
                self.rec.on_message(index, event.body)

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        sem = asyncio.Semaphore(200)

        async def one(c: ChatClient) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(c.close(), 5)
                except Exception:
                    pass

        await asyncio.gather(*(one(c) for c in self.clients))

    # -- sending -----------------------------------------------------------------

    async def _send(self, client: ChatClient, to: str) -> None:
        self.rec.in_flight += 1
        try:
            _, body = self.rec.body()
            await client.send(to, body)
            self.rec.sent += 1
        except Exception:
            self.rec.send_errors += 1
        finally:
            self.rec.in_flight -= 1

    async def offer(self, rate: float, duration: float, pairs: list[tuple[ChatClient, str]]) -> int:
        """Send at ``rate`` msgs/s for ``duration`` s, round-robin over (client, to); returns the number offered."""
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        offered = 0
        k = 0
        while (elapsed := time.perf_counter() - start) < duration and time.monotonic() < self.deadline:
            due = int(rate * elapsed) + 1
            while offered < due:
                offered += 1
                if self.rec.in_flight >= self.args.max_in_flight:
                    self.rec.skipped += 1
                    continue
                client, to = pairs[k % len(pairs)]
                k += 1
                task = asyncio.create_task(self._send(client, to))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, min(30.0, self.deadline - time.monotonic())))
        return offered

    async def drain(self, expected: Callable[[], int]) -> None:
        """Wait (at most --drain seconds) until every expected delivery has arrived."""
        end = min(time.monotonic() + self.args.drain, self.deadline)
        for _ in range(int(self.args.drain / 0.02) + 1):
            if self.rec.received >= expected() or time.monotonic() >= end:
                return
            await asyncio.sleep(0.02)

    # -- measurement ------------------------------------------------------------

    def snapshot(self) -> tuple[float, float, dict[str, float]]:
        t = self.me.cpu_times()
        return time.perf_counter(), float(t.user + t.system), self.probe.cpu()

    def usage(self, before: tuple[float, float, dict[str, float]], deliveries: int) -> dict[str, Any]:
        wall = time.perf_counter() - before[0]
        t = self.me.cpu_times()
        gen = (float(t.user + t.system) - before[1]) / wall if wall > 0 else 0.0
        out: dict[str, Any] = {"wall_s": round(wall, 3), "loadgen_cpu_fraction": round(gen, 3),
                               "loadgen_saturated": gen > 0.9}
        if self.probe.procs:
            after = self.probe.cpu()
            cpu = {name: round(after[name] - before[2].get(name, 0.0), 3) for name in after}
            out["server_cpu_s"] = cpu
            gw = sum(v for k, v in cpu.items() if k.startswith("gateway"))
            out["gateway_cpu_s"] = round(gw, 3)
            rss = self.probe.rss()
            out["server_rss_mib"] = {name: round(v / 2**20, 1) for name, v in rss.items()}
            if self.clients:  # the gateways' whole RSS (baseline included) per connection they hold
                gw_rss = sum(v for k, v in rss.items() if k.startswith("gateway"))
                out["gateway_rss_kib_per_connection"] = round(gw_rss / 1024 / len(self.clients), 1)
            if deliveries:
                out["gateway_cpu_us_per_delivered"] = round(gw / deliveries * 1e6, 1)
                out["server_cpu_us_per_delivered"] = round(sum(cpu.values()) / deliveries * 1e6, 1)
        return out

    def latency(self, start: int = 0) -> dict[str, float | None]:
        values = sorted(self.rec.latencies[start:])
        pick = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "max_ms": 100.0}
        return {k: (round(v, 2) if (v := percentile(values, q)) is not None else None) for k, q in pick.items()}

    def progress_line(self) -> str:
        recent = sorted(self.rec.latencies[-2000:])
        p99 = percentile(recent, 99)
        return (f"sent {self.rec.sent} delivered {self.rec.received} in-flight {self.rec.in_flight} "
                f"errors {self.rec.send_errors} p99(recent) {p99 if p99 is None else round(p99, 1)} ms "
                f"loadgen cpu {self.me.cpu_percent():.0f}%")

    # -- scenarios ----------------------------------------------------------------

    def dm_pairs(self) -> list[tuple[ChatClient, str]]:
        """Clients 2k and 2k+1 (different gateways when there are several URLs) message each other."""
        pairs: list[tuple[ChatClient, str]] = []
        for a in range(0, len(self.clients) - 1, 2):
            ca, cb = self.clients[a], self.clients[a + 1]
            pairs += [(ca, f"@{cb.user}"), (cb, f"@{ca.user}")]
        return pairs

    async def dm(self) -> dict[str, Any]:
        await self.connect(self.args.clients)
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
        return self.summary(offered, self.rec.sent, before)

    def _since(self, recv0: int, sent0: int) -> int:
        return recv0 + self.rec.sent - sent0

    async def _ramp(self, pairs: list[tuple[ChatClient, str]]) -> dict[str, Any]:
        rate = float(self.args.rate)
        steps: list[dict[str, Any]] = []
        held: float | None = None
        for _ in range(self.args.ramp_steps):
            if time.monotonic() > self.deadline:
                break
            sent0, recv0, lat0 = self.rec.sent, self.rec.received, len(self.rec.latencies)
            before = self.snapshot()
            with Progress(f"ramp {rate:.0f}/s", self.progress_line, self.args.progress, self.args.step_seconds), \
                    measuring():
                offered = await self.offer(rate, self.args.step_seconds, pairs)
                await self.drain(functools.partial(self._since, recv0, sent0))
            sent, received = self.rec.sent - sent0, self.rec.received - recv0
            lat = self.latency(lat0)
            step = {"rate": round(rate), "offered": offered, "sent": sent, "delivered": received,
                    "delivery_ratio": round(received / offered, 4) if offered else 0.0, **lat,
                    **self.usage(before, received)}
            steps.append(step)
            p99 = lat["p99_ms"]
            ok = step["delivery_ratio"] >= 0.99 and p99 is not None and p99 <= self.args.max_p99_ms
            print(f"  ramp {rate:8.0f}/s  delivered {received}/{offered}  p99 {p99} ms  "
                  f"loadgen cpu {step['loadgen_cpu_fraction']:.0%}  {'held' if ok else 'FAILED'}", file=sys.stderr)
            if not ok:
                break
            held = rate
            rate *= self.args.ramp_factor
        result = self.summary(sum(s["offered"] for s in steps), self.rec.sent, None)
        result.update({"ramp_steps": steps, "highest_rate_held": round(held) if held else None,
                       "max_p99_ms": self.args.max_p99_ms})
        return result

    async def broadcast(self) -> dict[str, Any]:
        await self.connect(self.args.clients)
        senders = [(c, "*") for c in self.clients[: max(1, self.args.senders)]]
        return await self._fan_out("broadcast", senders, len(self.clients) - 1)  # everyone but the sender

    async def group(self) -> dict[str, Any]:
        """Groups of ``--group-size`` consecutive clients (so every group spans the gateways); the
        first member of each created it and sends to it, round-robin at ``--rate`` in all."""
        await self.connect(self.args.clients)
        size = max(2, self.args.group_size)
        groups = [self.clients[i:i + size] for i in range(0, len(self.clients) - size + 1, size)]
        if not groups:
            raise RuntimeError(f"group needs at least --group-size ({size}) logged-in clients")
        senders: list[tuple[ChatClient, str]] = []
        for n, members in enumerate(groups):
            name = f"lt{self.run}g{n}"
            await members[0].group("create", name)
            await asyncio.gather(*(member.group("join", name) for member in members[1:]))
            senders.append((members[0], f"#{name}"))
        # Every member but the sender, whose own copy the readers skip.
        return {**await self._fan_out("group", senders, size - 1), "groups": len(groups)}

    async def _fan_out(self, label: str, senders: list[tuple[ChatClient, str]], recipients: int) -> dict[str, Any]:
        """Offer ``--rate`` messages/s over ``senders``; each should reach ``recipients`` readers."""
        await asyncio.sleep(self.args.settle)
        before = self.snapshot()
        with Progress(label, self.progress_line, self.args.progress, self.args.duration), measuring():
            offered = await self.offer(self.args.rate, self.args.duration, senders)
            await self.drain(lambda: self.rec.sent * recipients)
        result = self.summary(offered, self.rec.sent * recipients, before)
        result["recipients_per_message"] = recipients
        return result

    async def login_storm(self) -> dict[str, Any]:
        before = self.snapshot()
        elapsed = await self.connect(self.args.clients, read=False)
        n = len(self.clients)
        return {"logins": n, "login_errors": self.login_errors, "login_retries": self.login_retries,
                "login_error_kinds": self.error_kinds, "total_s": round(elapsed, 3),
                "logins_per_s": round(n / elapsed, 1) if elapsed else None, "connections_held": n,
                **self.usage(before, 0)}

    async def idle(self) -> dict[str, Any]:
        rss0 = self.probe.rss()
        before = self.snapshot()
        elapsed = await self.connect(self.args.clients, read=False)
        with Progress("idle", lambda: f"holding {len(self.clients)} connections", self.args.progress,
                      self.args.duration):
            await asyncio.sleep(min(self.args.duration, max(0.0, self.deadline - time.monotonic())))
        rss1 = self.probe.rss()
        result: dict[str, Any] = {"connections_held": len(self.clients), "login_errors": self.login_errors,
                                  "login_retries": self.login_retries,
                                  "connect_s": round(elapsed, 3), **self.usage(before, 0)}
        if self.probe.procs:
            per_gw: dict[str, Any] = {}
            gws = sorted(k for k in rss1 if k.startswith("gateway"))
            for i, name in enumerate(gws):
                conns = sum(1 for j in range(len(self.clients)) if j % len(gws) == i)  # round-robin placement
                delta = rss1[name] - rss0.get(name, 0)
                per_gw[name] = {"connections": conns, "rss_before_mib": round(rss0.get(name, 0) / 2**20, 1),
                                "rss_after_mib": round(rss1[name] / 2**20, 1),
                                "rss_kib_per_connection": round(delta / 1024 / conns, 2) if conns else None}
            result["gateways"] = per_gw
            total = sum(rss1[g] - rss0.get(g, 0) for g in gws)
            if self.clients:
                result["rss_kib_per_connection"] = round(total / 1024 / len(self.clients), 2)
        return result

    def summary(self, offered: int, expected: int, before: tuple[float, float, dict[str, float]] | None
                ) -> dict[str, Any]:
        r = self.rec
        wall = self.args.duration
        out: dict[str, Any] = {
            "offered": offered, "offered_rate": round(offered / wall, 1) if wall else None,
            "sent": r.sent, "send_errors": r.send_errors, "skipped_in_flight_cap": r.skipped,
            "expected_deliveries": expected, "delivered": r.received,
            "delivered_rate": round(r.received / wall, 1) if wall else None,
            "lost": max(0, expected - r.received), "duplicated": r.duplicated,
            "connections_held": len(self.clients), "login_errors": self.login_errors,
            "login_retries": self.login_retries,
            "login_error_kinds": self.error_kinds, **self.latency(),
        }
        if before is not None:
            out.update(self.usage(before, r.received))
        return out

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        step = max(1, len(self.rec.latencies) // 50_000)
        ax1.scatter(self.rec.send_times[::step], self.rec.latencies[::step], s=1, alpha=0.4)
        ax1.set_xlabel("send time (s)")
        ax1.set_ylabel("latency (ms)")
        ax1.set_title(f"{self.args.scenario}: latency over time")
        if self.rec.latencies:
            ax2.hist(self.rec.latencies, bins=100, log=True)
        ax2.set_xlabel("latency (ms)")
        ax2.set_ylabel("messages")
        ax2.set_title("latency distribution")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _print_report(scenario: str, result: dict[str, Any]) -> None:
    print(f"chinwag-loadtest {scenario}")
    for key, value in result.items():
        if key != "ramp_steps":
            print(f"  {key:32} {value}")
    if result.get("loadgen_saturated") or any(s.get("loadgen_saturated") for s in result.get("ramp_steps", [])):
        print("WARNING: load generator saturated (CPU > 90% of one core): the numbers measure it, not the server")


PLOTTED = ("dm", "broadcast", "group")  # the scenarios that measure message latency


def plotting_unavailable() -> str | None:
    """Why ``--plot`` cannot work here, or None: asked before any load, not after it."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        return (f"--plot needs matplotlib, which is in the bench extra: pip install 'chinwag[bench]' "
                f"(or pip install -e '.[bench]' in a checkout) [{exc}]")
    return None


def report(args: argparse.Namespace, result: dict[str, Any], plot: Callable[[Path], None] | None) -> int:
    """Print the results and write the JSON first, then plot: a failing plot loses no measurement."""
    _print_report(args.scenario, result)
    status = 0
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            print(f"chinwag-loadtest: cannot write --json {args.json}: {exc}; the results are printed above",
                  file=sys.stderr)
            status = 1
    if plot is not None:
        try:
            plot(Path(args.plot))
        except Exception as exc:  # whatever matplotlib or the file system raises: the results are kept
            kept = f"printed above and in {args.json}" if args.json and status == 0 else "printed above"
            print(f"chinwag-loadtest: --plot failed ({type(exc).__name__}: {exc}); the results are {kept}",
                  file=sys.stderr)
            status = 1
    return status


async def _main(args: argparse.Namespace) -> tuple[dict[str, Any], LoadTest]:
    cluster: Cluster | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if args.start_cluster:
            tmp = tempfile.TemporaryDirectory(prefix="chinwag-loadtest-")
            base_port = free_base_port("127.0.0.1", args.start_cluster)
            cluster = Cluster(gateways=args.start_cluster, base_port=base_port, data_dir=Path(tmp.name),
                              log_level="WARNING", extra_env=dict(LOAD_ENV))
            await asyncio.to_thread(cluster.up)
            urls = cluster.urls()
        else:
            urls = [u.strip() for u in args.urls.split(",") if u.strip()]
        test = LoadTest(args, urls, cluster)
        try:
            result: dict[str, Any] = await {"dm": test.dm, "broadcast": test.broadcast,
                                            "group": test.group, "login-storm": test.login_storm,
                                            "idle": test.idle}[args.scenario]()
        finally:
            await test.close()
        result = {"scenario": args.scenario, "urls": urls, "clients": args.clients,
                  "rate": args.rate, "duration": args.duration, "presence": args.presence,
                  "cluster_started": bool(cluster), "server_env": LOAD_ENV if cluster else None, **result}
        return result, test
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.down)
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chinwag-loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["dm", "broadcast", "group", "login-storm", "idle"])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--urls", help="comma-separated gateway URLs to load")
    where.add_argument("--start-cluster", type=int, metavar="N", help="start Redis, presence and N gateways")
    parser.add_argument("--clients", type=int, default=100, help="connected clients (users) (default 100)")
    parser.add_argument("--rate", type=float, default=1000, help="offered messages/s (default 1000)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of sending / holding (default 10)")
    parser.add_argument("--senders", type=int, default=1, help="broadcast: how many clients send (default 1)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="logins in progress at once (default 50: the gateways' Redis pool holds 64)")
    parser.add_argument("--login-attempts", type=int, default=6,
                        help="tries per login while the server answers 'unavailable' (default 6)")
    parser.add_argument("--max-in-flight", type=int, default=20_000, help="unacked sends before offers are skipped")
    parser.add_argument("--drain", type=float, default=10, help="seconds to wait for the last deliveries (default 10)")
    parser.add_argument("--settle", type=float, default=3, help="seconds between logins and sending (default 3)")
    parser.add_argument("--group-size", type=int, default=10, help="group: members per group (default 10)")
    parser.add_argument("--presence", choices=("each", "batched", "off"), default="batched",
                        help="what the clients ask to hear of others logging in and out (default batched, "
                             "as chinwag's own clients do)")
    parser.add_argument("--ramp", action="store_true", help="dm: raise the rate step by step until it fails")
    parser.add_argument("--ramp-factor", type=float, default=1.5)
    parser.add_argument("--ramp-steps", type=int, default=12)
    parser.add_argument("--step-seconds", type=float, default=4)
    parser.add_argument("--max-p99-ms", type=float, default=250)
    parser.add_argument("--timeout", type=float, default=600, help="hard limit on the whole run in seconds")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--plot", help="write a PNG of latency over time and its distribution")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no status line on stderr")
    args = parser.parse_args(argv)
    if args.clients < 1 or (args.start_cluster is not None and args.start_cluster < 1):
        parser.error("--clients and --start-cluster must be at least 1")
    if args.urls is not None and not args.urls.strip():
        parser.error("--urls is empty")
    if args.plot and args.scenario not in PLOTTED:
        parser.error(f"--plot draws message latencies: only {', '.join(PLOTTED)} measure them")
    if args.plot and (why := plotting_unavailable()):
        print(f"chinwag-loadtest: {why}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result, test = runner.run(_main(args))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"chinwag-loadtest: {exc}", file=sys.stderr)
        return 2
    return report(args, result, test.plot if args.plot else None)


if __name__ == "__main__":
    raise SystemExit(main())
