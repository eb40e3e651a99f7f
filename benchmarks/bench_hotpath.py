"""CPU per operation of the gateway's per-message steps, in one process: a stable A/B measure.

    python -m benchmarks.bench_hotpath [--n 20000] [--rounds 7]

The load tests' "gateway CPU per DM" swings by 30 % from run to run when the machine is
shared (a starved gateway batches more and spends less per message), which hides a change
worth 5 %.  These loops time the same code a DM runs through, on this process's CPU clock,
best of ``--rounds``; run it against two checkouts (``PYTHONPATH=<tree>``) to compare them:

* ``parse``: a client's ``send`` frame (a str, as websockets gives it) into a ``Send``;
* ``pack``: the RESP command of a DM's ``EVALSHA`` (8 keys, 9 arguments);
* ``evalsha``: a script call through the auto-pipeline to a real redis-server, 100 in flight
  (this process's side only: queueing, the write, hiredis, resolving the future);
* ``push``: ``Session.push`` of a 200-byte message frame to a real WebSocket over loopback;
* ``fanout``: ``Fanout.broadcast`` of that frame to 100 such sockets, per socket;
* ``send_floor``: a bare ``socket.send`` of the same bytes to 100 loopback TCP sockets, per
  socket, read the same way: the kernel's share of ``fanout``, which no Python change removes;
* ``redis_dm``: Redis's own CPU (``INFO cpu``) per ``Store.send_dm`` to an online recipient
  (dedupe, stored in both streams, published), 100 in flight: the Redis side of a DM.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from common import keys
from common.metrics import Counter
from gateway.connection import bounded_connection
from gateway.fanout import Fanout
from gateway.pipeline import AutoPipeline, pack
from gateway.session import Session
from gateway.store import Store
from protocol.frames import FrameParser

SEND = '{"type":"send","to":"@ltabcdefu17","body":"r=abcdef s=16 n=1234 t=123456789012345","ref":"c-1234"}'
DM_ARGS: list[Any] = [b"EVALSHA", "0123456789abcdef0123456789abcdef01234567", 8,
                      "cw:dedupe:ltabcdefu16:c-1234", "cw:lastid", "cw:dm:ltabcdefu16:ltabcdefu17",
                      "cw:inbox:ltabcdefu17", "cw:account:ltabcdefu17", "cw:session:ltabcdefu17", "cw:origins",
                      "cw:rate:ltabcdefu16", "0123456789abcdef", 600, b'"ltabcdefu16"',
                      b'"r=abcdef s=16 n=1234 t=123456789012345"', 10000, "cw:user:ltabcdefu17", b"", 0, 0]
FRAME = (b'{"type":"message","id":"1764398000000-0","from":"ltabcdefu16","to":"@ltabcdefu17",'
         b'"body":"r=abcdef s=16 n=1234 t=123456789012345","ts":1764398000000}').ljust(200)


def best(fn: Callable[[], None], n: int, rounds: int) -> float:
    """Microseconds of CPU per call, best of ``rounds`` runs of ``n`` calls."""
    times = []
    for _ in range(rounds):
        t = time.process_time()
        fn()
        times.append((time.process_time() - t) / n * 1e6)
    return min(times)


def bench_pure(n: int, rounds: int) -> dict[str, float]:
    parser = FrameParser()

    def parse() -> None:
        for _ in range(n):
            parser.parse(SEND)

    def packs() -> None:
        for _ in range(n):
            pack(DM_ARGS)

    return {"parse": best(parse, n, rounds), "pack": best(packs, n, rounds)}


async def bench_evalsha(n: int, rounds: int, redis_url: str) -> float:
    class Script:
        script = "return ARGV[1]"
        sha = ""

    pipeline = AutoPipeline(redis_url)
    Script.sha = (await pipeline.call([b"SCRIPT", b"LOAD", Script.script])).decode()
    times = []
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(n // 100):
            await asyncio.gather(*(pipeline.evalsha(Script, ["k"], [b"x" * 100]) for _ in range(100)))
        times.append((time.process_time() - t) / n * 1e6)
    await pipeline.aclose()
    return min(times)


async def bench_redis_dm(n: int, rounds: int, redis_url: str) -> float:
    """µs of Redis CPU per DM stored and published (the recipient has a session on a gateway)."""
    redis = aioredis.from_url(redis_url)
    pipeline = AutoPipeline(redis_url)
    store = Store(redis, pipeline=pipeline)
    await redis.hset(keys.account("bob"), mapping={"name": "bob"})
    await redis.hset(keys.session("bob"), mapping={"gw": "gw1"})

    async def cpu() -> float:
        info = await redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    times = []
    sent = 0
    for _ in range(rounds):
        before = await cpu()
        for _ in range(n // 100):
            await asyncio.gather(*(store.send_dm(b'"alice"', "alice", "bob", f"hello {sent + i}", f"r{sent + i}")
                                   for i in range(100)))
            sent += 100
        times.append((await cpu() - before) / n * 1e6)
    await pipeline.aclose()
    await redis.aclose()
    return min(times)


async def bench_push(n: int, rounds: int, fan: int = 100) -> tuple[float, float]:
    """(push, fanout): µs of CPU per frame written to one socket, and per socket of a fan-out."""
    conns: list[ServerConnection] = []
    ready = asyncio.Event()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        if len(conns) == fan:
            ready.set()
        await done.wait()

    cls = bounded_connection(1 << 30, 0, lambda *a: None)
    async with serve(handler, "127.0.0.1", 0, create_connection=cls, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        clients = [await connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, max_queue=None)
                   for _ in range(fan)]
        await ready.wait()
        session = Session(conns[0], "u", "u", "t", "h", 1 << 30, lambda s: None)
        reader = next(c for c in clients if c.local_address == conns[0].remote_address)
        push_times = []
        for _ in range(rounds):
            spent = 0.0
            for _ in range(n // 500):
                t = time.process_time()
                for _ in range(500):
                    session.push(FRAME)
                spent += time.process_time() - t
                for _ in range(500):
                    await reader.recv()
            push_times.append(spent / n * 1e6)
        fanout = Fanout(1.0, list, Counter("x", "x", ("kind",)))
        fanout.live.update(conns)
        fan_times = []
        for _ in range(rounds):
            spent = 0.0
            for _ in range(n // fan // 10):
                t = time.process_time()
                for _ in range(10):
                    fanout.broadcast(FRAME)
                spent += time.process_time() - t
                for c in clients:
                    for _ in range(10):
                        await c.recv()
            fan_times.append(spent / (n // fan // 10 * 10 * fan) * 1e6)
        done.set()
        for c in clients:
            await c.close()
    return min(push_times), min(fan_times)


def bench_send_floor(n: int, rounds: int, fan: int = 100) -> float:
    """µs of CPU per ``send`` of a framed 200-byte message to one of ``fan`` loopback TCP sockets."""
    data = b"\x81\x7e" + len(FRAME).to_bytes(2, "big") + FRAME
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(fan)
        readers = [socket.create_connection(listener.getsockname()) for _ in range(fan)]
        writers = [listener.accept()[0] for _ in range(fan)]
    try:
        for sock in readers + writers:
            sock.setblocking(False)
        for sock in writers:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports have it
        times = []
        for _ in range(rounds):
            spent = 0.0
            for _ in range(n // fan // 10):
                t = time.process_time()
                for _ in range(10):
                    for sock in writers:
                        sock.send(data)
                spent += time.process_time() - t
                for sock in readers:
                    while len(sock.recv(1 << 16)) == 1 << 16:
                        pass
            times.append(spent / (n // fan // 10 * 10 * fan) * 1e6)
        return min(times)
    finally:
        for sock in readers + writers:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_hotpath", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the best is reported (default 7)")
    args = parser.parse_args(argv)
    out = bench_pure(args.n, args.rounds)
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--dir", tmp, "--logfile", str(Path(tmp) / "log")])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            out["evalsha"] = asyncio.run(bench_evalsha(args.n, args.rounds, f"redis://127.0.0.1:{port}/0"))
            out["redis_dm"] = asyncio.run(bench_redis_dm(args.n, args.rounds, f"redis://127.0.0.1:{port}/0"))
        finally:
            redis.terminate()
            redis.wait(10)
    out["push"], out["fanout"] = asyncio.run(bench_push(args.n, args.rounds))
    out["send_floor"] = bench_send_floor(args.n, args.rounds)
    for name, us in out.items():
        print(f"{name:8} {us:6.2f} µs CPU per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
