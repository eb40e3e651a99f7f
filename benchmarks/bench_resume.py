"""How long a client away for N messages takes to catch up on reconnect.

    python3 -m benchmarks.bench_resume [--missed 1000] [--rounds 7]

Starts its own redis-server (free loopback port) and one gateway process,
logs ``bob`` in, notes his resume positions, disconnects him, sends him N DMs
and N/10 broadcasts from ``alice``, then times bob's reconnect: socket open,
login with ``resume``, and every missed message received.  Prints the median
and spread over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from chinwag.cluster import Cluster, free_base_port
from client import ChatClient
from protocol import frames as f


async def one_round(url: str, missed: int, round_no: int) -> float:
    alice = await ChatClient.open(url, f"alice{round_no}", "pw", reconnect=False)
    bob = await ChatClient.open(url, f"bob{round_no}", "pw", reconnect=False)
    positions = dict(bob.positions)
    await bob.close()
    for i in range(missed):
        await alice.send(f"@bob{round_no}", f"missed {i}")
    for i in range(missed // 10):
        await alice.send("*", f"broadcast {i}")
    want = missed + missed // 10
    again = ChatClient(url, reconnect=False)
    started = time.perf_counter()
    await again.connect()
    again.positions = positions
    await again.login(f"bob{round_no}", "pw")
    got = 0
    while got < want:
        if isinstance(await again.next_event(30), f.Message):
            got += 1
    elapsed = time.perf_counter() - started
    await again.close()
    await alice.close()
    return elapsed


async def main_async(missed: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # Production password hashing: the reconnect pays for a real argon2id verify.
        env = {
            "CHINWAG_ARGON2_MEMORY_KIB": "19456", "CHINWAG_ARGON2_TIME_COST": "2",
            "CHINWAG_RATE_MESSAGES": "0",  # the sender replays a backlog as fast as it can
        }
        cluster = Cluster(gateways=1, base_port=free_base_port("127.0.0.1", 1), data_dir=Path(tmp), log_level="WARNING",
                          appendonly=False, extra_env=env)
        try:
            cluster.up()
            times = [await one_round(cluster.urls()[0], missed, r) for r in range(rounds)]
        finally:
            cluster.down()
    times_ms = sorted(t * 1000 for t in times)
    print(f"resume of {missed} DMs + {missed // 10} broadcasts, {rounds} rounds: "
          f"median {statistics.median(times_ms):.1f} ms, min {times_ms[0]:.1f} ms, max {times_ms[-1]:.1f} ms "
          "(includes connect and a production-cost argon2id login)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.missed, args.rounds))


if __name__ == "__main__":
    main()
