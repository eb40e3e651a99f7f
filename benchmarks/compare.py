"""Chinwag against python-socketio: the same DM load on both, in one go, on one machine.

    python -m benchmarks.compare [--pairs 20] [--duration 10] [--window 8] [--rate 500]

Starts one redis-server (free loopback port, no persistence), a Chinwag
process cluster (presence + 2 gateways) and 2 python-socketio servers
(benchmarks/socketio_chat/server.py, AsyncRedisManager) on that Redis.  Then,
for each system in turn, with the same load generator (this process, one
asyncio loop on uvloop):

* logs in ``--pairs`` pairs of users, sender on server 1, receiver on server 2;
* fixed rate: ``--rate`` DMs/s in total, spread evenly over the pairs, for
  ``--latency-duration`` seconds (open loop) -> latency p50/p99 at a moderate load;
* saturation: each sender keeps ``--window`` DMs in flight (a DM is in flight
  from its send until the receiver has it) for ``--duration`` seconds after a
  1 s warm-up -> the sustained delivered DM rate and its latency.

Latency is from just before the send to the receiver's callback.  A DM acked
but not delivered within 10 s counts as lost.  CPU use of the load generator,
the servers and Redis is read per phase (``/proc``), so a saturated load
generator shows.  Prints a table with the ratio chinwag/socketio; Ctrl-C stops
every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import socketio

from chinwag.cluster import Cluster
from client.chat import ChatClient
from protocol import frames as f

ROOT = Path(__file__).resolve().parent.parent
DELIVERY_TIMEOUT = 10.0
CHINWAG_ENV = {
    "CHINWAG_RATE_MESSAGES": "0",
    "CHINWAG_IP_CONNECTIONS": "0",
    "CHINWAG_IP_LOGINS": "0",
    "CHINWAG_ARGON2_MEMORY_KIB": "1024",
    "CHINWAG_LOG_LEVEL": "WARNING",
}


# -- processes ----------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_base(offsets: tuple[int, ...]) -> int:
    for _ in range(200):
        base = random.randrange(20000, 50000)
        if all(_port_free(base + o) for o in offsets):
            return base
    raise RuntimeError("no free port range found")


class BenchCluster(Cluster):
    """chinwag.cluster.Cluster with the benchmark's limits passed to every node."""

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env.update(CHINWAG_ENV)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat), 0 where unavailable."""
    try:
        cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(cpu[:8]) - cpu[3] - cpu[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return 0.0


def _wait_until(check: Callable[[], bool], timeout: float, what: str,
                procs: list[subprocess.Popen[bytes]] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.05)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Stack:
    """Redis, the Chinwag cluster and the socketio servers; stop() ends every one of them."""

    tmp: Path
    redis: subprocess.Popen[bytes] | None = None
    redis_url: str = ""
    cluster: BenchCluster | None = None
    sio: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sio_urls: list[str] = field(default_factory=list)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        port = _free_port()
        self.redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp), "--logfile", str(self.tmp / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_until(lambda: _redis_pong(port), 10, "redis-server", [self.redis])
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.cluster = BenchCluster(gateways=2, base_port=_free_base((0, 1, 100, 101)), redis_url=self.redis_url,
                                    data_dir=self.tmp / "chinwag", log_level="WARNING")
        self.cluster.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for _ in range(2):  # spawned before the cluster's wait, so both start in parallel
            sport = _free_port()
            self.sio.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.socketio_chat.server", "--port", str(sport),
                 "--redis-url", self.redis_url], env=env, cwd=ROOT))
            self.sio_urls.append(f"http://127.0.0.1:{sport}")
        self.cluster.up()
        for url in self.sio_urls:
            _wait_until(lambda u=url: _http_ok(f"{u}/healthz"), 20, f"socketio server {url}", self.sio)

    def pids(self, system: str) -> list[int]:
        if system == "chinwag":
            return [p.pid for _, p in self.cluster.procs] if self.cluster else []
        return [p.pid for p in self.sio]

    def stop(self) -> None:
        for p in self.sio:
            if p.poll() is None:
                p.terminate()
        if self.cluster is not None:
            self.cluster.down(timeout=10)  # gateways, presence (redis_url is external: not stopped there)
        for p in self.sio:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(5)


# -- the two systems behind one interface ----------------------------------------------


OnBody = Callable[[str], None]


class Pair:
    async def send(self, body: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class ChinwagPair(Pair):
    def __init__(self, sender: ChatClient, receiver: ChatClient, to: str, on_body: OnBody) -> None:
        self.sender, self.receiver, self.to = sender, receiver, to
        self.reader = asyncio.create_task(self._read(on_body))

    @classmethod
    async def open(cls, urls: list[str], i: int, tag: str, on_body: OnBody) -> ChinwagPair:
        s = await ChatClient.open(urls[0], f"s{tag}{i}", "pw", reconnect=False)
        r = await ChatClient.open(urls[1], f"r{tag}{i}", "pw", reconnect=False)
        return cls(s, r, f"@r{tag}{i}", on_body)

    async def _read(self, on_body: OnBody) -> None:
        async for event in self.receiver.events():
            if isinstance(event, f.Message):
                on_body(event.body)

    async def send(self, body: str) -> None:
        await self.sender.send(self.to, body)

    async def close(self) -> None:
        await self.sender.close()
        await self.receiver.close()
        await asyncio.gather(self.reader, return_exceptions=True)


class SocketioPair(Pair):
    def __init__(self, sender: socketio.AsyncClient, receiver: socketio.AsyncClient, to: str) -> None:
        self.sender, self.receiver, self.to = sender, receiver, to
        self.refs = itertools.count(1)

    @staticmethod
    async def _client(url: str, user: str, on_body: OnBody | None) -> socketio.AsyncClient:
        c = socketio.AsyncClient(reconnection=False)
        if on_body is not None:
            async def on_message(data: dict[str, Any]) -> None:
                on_body(data["body"])
            c.on("message", on_message)
        await c.connect(url, transports=["websocket"])
        reply = await c.call("login", {"user": user}, timeout=10)
        if not reply.get("ok"):
            raise RuntimeError(f"socketio login of {user} failed: {reply}")
        return c

    @classmethod
    async def open(cls, urls: list[str], i: int, tag: str, on_body: OnBody) -> SocketioPair:
        s = await cls._client(urls[0], f"s{tag}{i}", None)
        r = await cls._client(urls[1], f"r{tag}{i}", on_body)
        return cls(s, r, f"r{tag}{i}")

    async def send(self, body: str) -> None:
        ack = await self.sender.call("dm", {"to": self.to, "body": body, "ref": str(next(self.refs))},
                                     timeout=DELIVERY_TIMEOUT)
        if "id" not in ack:
            raise RuntimeError(f"dm refused: {ack}")

    async def close(self) -> None:
        await self.sender.disconnect()
        await self.receiver.disconnect()


# -- load -----------------------------------------------------------------------


@dataclass
class Tracker:
    """Send times of DMs in flight; the receiver callback resolves them."""

    inflight: dict[str, tuple[float, asyncio.Future[None]]] = field(default_factory=dict)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (delivered at, seconds)
    unknown: int = 0
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def begin(self, pair: int) -> tuple[str, asyncio.Future[None]]:
        body = f"{pair}:{next(self.seq)}"
        fut = asyncio.get_running_loop().create_future()
        self.inflight[body] = (time.perf_counter(), fut)
        return body, fut

    def on_body(self, body: str) -> None:
        entry = self.inflight.pop(body, None)
        if entry is None:
            self.unknown += 1
            return
        now = time.perf_counter()
        self.latencies.append((now, now - entry[0]))
        if not entry[1].done():
            entry[1].set_result(None)


@dataclass
class PhaseResult:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    errors: int = 0
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    gen_cpu: float = 0.0  # % of one core
    server_cpu: float = 0.0
    redis_cpu: float = 0.0
    other_cpu: float = 0.0  # everything else on the machine (should be ~0 for a clean run)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


class Meter:
    def __init__(self, server_pids: list[int], redis_pid: int) -> None:
        self.server_pids, self.redis_pid = server_pids, redis_pid

    def __enter__(self) -> Meter:
        self.wall = time.perf_counter()
        self.gen = time.process_time()
        self.srv = sum(_cpu_seconds(p) for p in self.server_pids)
        self.red = _cpu_seconds(self.redis_pid)
        self.all = _machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        self.gen_pct = 100 * (time.process_time() - self.gen) / wall
        self.srv_pct = 100 * (sum(_cpu_seconds(p) for p in self.server_pids) - self.srv) / wall
        self.red_pct = 100 * (_cpu_seconds(self.redis_pid) - self.red) / wall
        ours = self.gen_pct + self.srv_pct + self.red_pct
        self.other_pct = max(0.0, 100 * (_machine_busy() - self.all) / wall - ours)


async def _one(pair: Pair, idx: int, tracker: Tracker, res: PhaseResult) -> None:
    body, fut = tracker.begin(idx)
    try:
        await pair.send(body)
    except Exception:
        res.errors += 1
        tracker.inflight.pop(body, None)
        return
    res.sent += 1
    try:
        await asyncio.wait_for(fut, DELIVERY_TIMEOUT)
    except TimeoutError:
        res.lost += 1
        tracker.inflight.pop(body, None)


async def fixed_rate(pairs: list[Pair], tracker: Tracker, rate: float, duration: float, meter: Meter) -> PhaseResult:
    res = PhaseResult()
    tracker.latencies.clear()
    interval = len(pairs) / rate
    tasks: list[asyncio.Task[None]] = []

    async def drive(idx: int, pair: Pair) -> None:
        start = time.perf_counter() + interval * idx / len(pairs)  # stagger the pairs
        for k in itertools.count():
            at = start + k * interval
            if at - t0 >= duration:
                return
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks.append(asyncio.create_task(_one(pair, idx, tracker, res)))

    with meter:
        t0 = time.perf_counter()
        await asyncio.gather(*(drive(i, p) for i, p in enumerate(pairs)))
        await asyncio.gather(*tasks)
    return _finish(res, [d for _, d in tracker.latencies], duration, meter)


def _finish(res: PhaseResult, lat: list[float], duration: float, meter: Meter) -> PhaseResult:
    """A phase's figures from its latencies and the CPU the meter saw."""
    res.delivered = len(lat)
    res.rate = res.delivered / duration
    res.p50_ms, res.p99_ms = _pct(lat, 0.50), _pct(lat, 0.99)
    res.gen_cpu, res.server_cpu, res.redis_cpu = meter.gen_pct, meter.srv_pct, meter.red_pct
    res.other_cpu = meter.other_pct
    return res


async def saturate(pairs: list[Pair], tracker: Tracker, window: int, duration: float, meter: Meter | None
                   ) -> PhaseResult:
    res = PhaseResult()
    tracker.latencies.clear()
    t0 = time.perf_counter()
    end = t0 + duration

    async def worker(idx: int, pair: Pair) -> None:
        while time.perf_counter() < end:
            await _one(pair, idx, tracker, res)

    workers = [worker(i, p) for i, p in enumerate(pairs) for _ in range(window)]
    if meter is None:
        await asyncio.gather(*workers)
        return res
    with meter:
        await asyncio.gather(*workers)
    return _finish(res, [d for at, d in tracker.latencies if at <= end], duration, meter)


async def run_system(name: str, opener: Callable[[list[str], int, str, OnBody], Awaitable[Pair]], urls: list[str],
                     args: argparse.Namespace, meter: Meter, tag: str) -> dict[str, Any]:
    tracker = Tracker()
    pairs: list[Pair] = []
    try:
        for i in range(args.pairs):
            pairs.append(await opener(urls, i, tag, tracker.on_body))
        print(f"{name}: {len(pairs)} pairs logged in; {args.rate:g}/s for {args.latency_duration:g}s ...",
              file=sys.stderr, flush=True)
        fixed = await fixed_rate(pairs, tracker, args.rate, args.latency_duration, meter)
        await saturate(pairs, tracker, args.window, 1.0, None)  # warm-up
        print(f"{name}: saturating, window {args.window} per pair, for {args.duration:g}s ...",
              file=sys.stderr, flush=True)
        sat = await saturate(pairs, tracker, args.window, args.duration, meter)
    finally:
        await asyncio.gather(*(p.close() for p in pairs), return_exceptions=True)
    return {"fixed": fixed, "sat": sat, "unknown": tracker.unknown}


# -- report ---------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    c, s = results["chinwag"], results["socketio"]
    lines = [f"{'':40} {'chinwag':>10} {'socketio':>10} {'chinwag/socketio':>17}"]

    def row(label: str, phase: str, attr: str, fmt: str = "{:,.0f}") -> None:
        a, b = getattr(c[phase], attr), getattr(s[phase], attr)
        lines.append(f"{label:40} {fmt.format(a):>10} {fmt.format(b):>10} {_ratio(a, b):>17}")

    def losses(phase: str) -> None:
        a, b = f"{c[phase].lost} / {c[phase].errors}", f"{s[phase].lost} / {s[phase].errors}"
        lines.append(f"{'  lost / send errors':40} {a:>10} {b:>10}")

    row("sustained DM rate (delivered/s)", "sat", "rate")
    row("  p50 latency at saturation (ms)", "sat", "p50_ms", "{:,.1f}")
    row("  p99 latency at saturation (ms)", "sat", "p99_ms", "{:,.1f}")
    losses("sat")
    row("  load generator CPU (% of a core)", "sat", "gen_cpu")
    row("  servers CPU (% of a core, all)", "sat", "server_cpu")
    row("  redis CPU (% of a core)", "sat", "redis_cpu")
    row("  other processes CPU (% of a core)", "sat", "other_cpu")
    row(f"delivered/s at {args.rate:g}/s offered", "fixed", "rate")
    row(f"  p50 latency at {args.rate:g}/s (ms)", "fixed", "p50_ms", "{:,.2f}")
    row(f"  p99 latency at {args.rate:g}/s (ms)", "fixed", "p99_ms", "{:,.2f}")
    losses("fixed")
    row("  load generator CPU (% of a core)", "fixed", "gen_cpu")
    row("  servers CPU (% of a core, all)", "fixed", "server_cpu")
    row("  other processes CPU (% of a core)", "fixed", "other_cpu")
    ratio = c["sat"].rate / s["sat"].rate if s["sat"].rate else float("inf")
    lines.append("")
    lines.append(f"sustained DM rate ratio chinwag/socketio: {ratio:.2f}x  (target >= 8x: "
                 f"{'met' if ratio >= 8 else 'NOT met'})")
    gen = max(c["sat"].gen_cpu, s["sat"].gen_cpu)
    if gen >= 85:
        lines.append(f"note: the load generator used {gen:.0f}% of a core at saturation; it may be the bottleneck")
    other = max(c["sat"].other_cpu, s["sat"].other_cpu, c["fixed"].other_cpu, s["fixed"].other_cpu)
    if other >= 10:
        lines.append(f"note: other processes used up to {other:.0f}% of a core during a phase; the run is not clean")
    if c["unknown"] or s["unknown"]:
        lines.append(f"unexpected/duplicate deliveries: chinwag {c['unknown']}, socketio {s['unknown']}")
    return "\n".join(lines)


async def main_async(stack: Stack, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    assert stack.cluster is not None and stack.redis is not None
    tag = f"{os.getpid() % 10000}x"
    systems: list[tuple[str, Any, list[str]]] = [
        ("chinwag", ChinwagPair.open, stack.cluster.urls()),
        ("socketio", SocketioPair.open, stack.sio_urls),
    ]
    if args.socketio_first:
        systems.reverse()
    results = {}
    for name, opener, urls in systems:
        results[name] = await run_system(name, opener, urls, args, Meter(stack.pids(name), stack.redis.pid), tag)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--pairs", type=int, default=20, help="sender/receiver pairs per system (default 20)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of saturation load (default 10)")
    parser.add_argument("--window", type=int, default=8, help="DMs in flight per pair at saturation (default 8)")
    parser.add_argument("--rate", type=float, default=500.0, help="total DMs/s of the fixed-rate phase (default 500)")
    parser.add_argument("--latency-duration", type=float, default=5.0, help="seconds of the fixed-rate phase "
                        "(default 5)")
    parser.add_argument("--socketio-first", action="store_true", help="load socketio before chinwag")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.window < 1 or args.duration <= 0 or args.rate <= 0 or args.latency_duration <= 0:
        parser.error("--pairs, --window, --duration, --rate and --latency-duration must be positive")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    with tempfile.TemporaryDirectory(prefix="chinwag-compare-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            results = runner(main_async(stack, args))
        except KeyboardInterrupt:
            print("interrupted; stopping everything", file=sys.stderr)
            return 130
        except RuntimeError as exc:
            print(f"compare: {exc}", file=sys.stderr)
            return 1
        finally:
            stack.stop()
    print(f"{args.pairs} pairs (sender on server 1, receiver on server 2), window {args.window}, "
          f"{args.duration:g}s saturation; {args.rate:g}/s for {args.latency_duration:g}s; "
          f"{os.cpu_count()} cores, everything on this machine")
    print(report(results, args))
    if args.json:
        args.json.write_text(json.dumps({k: {"fixed": vars(v["fixed"]), "sat": vars(v["sat"])}
                                         for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
