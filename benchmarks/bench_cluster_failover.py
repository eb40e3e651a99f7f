"""What a Redis Cluster master failover costs a sharded subscriber: the numbers in docs/cluster.md.

    python3 -m benchmarks.bench_cluster_failover [--rounds 5] [--masters 3]

Starts a real cluster (common.redis_cluster: N masters + N replicas, node
timeout 2 s) and times its start.  Then, per round: a ShardedSubscriber holds a
channel on the master about to die while SPUBLISH sends a numbered message
every 10 ms; the master is ``kill -9``ed; measured are the promotion (kill ->
its replica reports ``role:master``), when the subscriber noticed (``on_lost``),
when it was subscribed again (``on_resubscribed``) and the dark time (kill ->
first message after the kill).  The killed node is restarted (it rejoins as a
replica) before the next round.  Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import statistics
import time

from common.redis import REDIS_ERRORS, connect_redis_cluster
from common.redis_cluster import RedisCluster, wait_for
from common.sharded_pubsub import ShardedSubscriber


async def one_round(cluster: RedisCluster, channel: bytes) -> dict[str, float]:
    publisher = connect_redis_cluster(cluster.url)
    subscriber = ShardedSubscriber(connect_redis_cluster(cluster.url))
    marks: dict[str, float] = {}
    received: list[float] = []
    subscriber.on_lost = lambda _: marks.setdefault("lost", time.monotonic())
    subscriber.on_resubscribed = lambda _: marks.setdefault("back", time.monotonic())
    runner = asyncio.create_task(subscriber.run())

    async def publish() -> None:
        for n in itertools.count():
            with contextlib.suppress(*REDIS_ERRORS):
                await publisher.spublish(channel, str(n).encode())
            await asyncio.sleep(0.01)  # the publishing rate

    sender = asyncio.create_task(publish())
    master = cluster.master_for_key(channel)
    try:
        await subscriber.subscribe(channel, lambda _: received.append(time.monotonic()))
        await asyncio.to_thread(wait_for, lambda: len(received) > 5, 5, "messages before the kill")
        killed = time.monotonic()
        failover = await asyncio.to_thread(cluster.kill_master, master, 30)
        await asyncio.to_thread(wait_for, lambda: "back" in marks and received[-1] > marks["back"], 30,
                                "messages after the failover")
        first_after = next(t for t in received if t > marks["back"])
        return {"promoted": failover.seconds, "noticed": marks["lost"] - killed,
                "resubscribed": marks["back"] - killed, "dark": first_after - killed}
    finally:
        for task in (sender, runner):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await publisher.aclose()
        await subscriber.cluster.aclose()
        await asyncio.to_thread(cluster.restart, master)


async def main_async(rounds: int, masters: int) -> None:
    cluster = RedisCluster(masters=masters).start()
    try:
        print(f"cluster of {masters}+{masters} ({cluster.binary}) started in {cluster.started_in:.2f}s")
        results = []
        for i in range(rounds):
            result = await one_round(cluster, f"cw:bench:failover{i}".encode())
            results.append(result)
            print(f"round {i + 1}: " + "  ".join(f"{k} {v:.2f}s" for k, v in result.items()), flush=True)
        print("median:  " + "  ".join(f"{k} {statistics.median(r[k] for r in results):.2f}s" for k in results[0]))
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--masters", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the subscriber's warnings are expected here
    asyncio.run(main_async(args.rounds, args.masters))


if __name__ == "__main__":
    main()
