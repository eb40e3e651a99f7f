"""The load ``benchmarks.compare`` puts on each system: a pair of clients per sender and
receiver (Chinwag's ``ChatClient`` or a ``socketio.AsyncClient``), a fixed-rate phase and a
saturation phase, and the CPU meter around each.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

from benchmarks.compare_stack import DELIVERY_TIMEOUT, cpu_seconds, machine_busy
from client.chat import ChatClient
from protocol import frames as f

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
    server_us_per_dm: float = 0.0  # servers' CPU per delivered DM (µs)
    redis_us_per_dm: float = 0.0
    gen_us_per_dm: float = 0.0


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
        self.srv = sum(cpu_seconds(p) for p in self.server_pids)
        self.red = cpu_seconds(self.redis_pid)
        self.all = machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        self.gen_pct = 100 * (time.process_time() - self.gen) / wall
        self.srv_pct = 100 * (sum(cpu_seconds(p) for p in self.server_pids) - self.srv) / wall
        self.red_pct = 100 * (cpu_seconds(self.redis_pid) - self.red) / wall
        ours = self.gen_pct + self.srv_pct + self.red_pct
        self.other_pct = max(0.0, 100 * (machine_busy() - self.all) / wall - ours)


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
    if res.rate:  # % of a core / DMs per second -> µs of CPU per DM
        res.server_us_per_dm = res.server_cpu / 100 / res.rate * 1e6
        res.redis_us_per_dm = res.redis_cpu / 100 / res.rate * 1e6
        res.gen_us_per_dm = res.gen_cpu / 100 / res.rate * 1e6
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
