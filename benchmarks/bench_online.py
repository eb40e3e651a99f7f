"""What one login's online list costs with N users online: one page (today) against everyone (before).

    python3 -m benchmarks.bench_online [--online 1000 10000] [--logins 200] [--page 1000]

Starts its own redis-server (free loopback port), puts N names online through
the registry's claim script, then times ``--logins`` more claims (the Lua call
every login makes) twice: returning the first ``--page`` names, as gateways do
now, and returning every name (a limit above N), which is what every login
cost before ``welcome.online`` was capped.  Prints, per login: wall time, this
process's CPU (decoding the names), the JSON bytes of the list that goes into
the ``welcome``, and Redis's own microseconds per script call.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from chinwag.cluster import Cluster
from presence.registry import Registry


async def measure(redis: Redis, online: int, logins: int, limit: int) -> dict[str, float]:
    await redis.flushall()
    registry = Registry(redis)
    await registry.register_gateway("gw")
    for i in range(online):
        await registry.claim(f"user{i:05d}", f"user{i:05d}", "gw", f"t{i}", online_limit=0)
    await redis.config_resetstat()
    size = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for j in range(logins):
        claim = await registry.claim(f"new{j:05d}", f"new{j:05d}", "gw", f"n{j}", online_limit=limit)
        assert claim is not None
        size += len(msgspec.json.encode(claim.online.names))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    return {"wall_ms": wall / logins * 1000, "cpu_ms": cpu / logins * 1000, "bytes": size / logins,
            "redis_us": float(stats.get("usec_per_call", 0.0))}


async def main_async(onlines: list[int], logins: int, page: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Cluster(data_dir=Path(tmp), appendonly=False)
        redis = Redis.from_url(server.start_redis())
        try:
            print("| online | list | wall per login | client CPU per login | list bytes | Redis µs per claim |")
            print("|---|---|---|---|---|---|")
            for online in onlines:
                for label, limit in ((f"first {page:,}", page), ("everyone", online + logins + 1)):
                    r = await measure(redis, online, logins, limit)
                    print(f"| {online:,} | {label} | {r['wall_ms']:.2f} ms | {r['cpu_ms']:.2f} ms | "
                          f"{r['bytes']:,.0f} | {r['redis_us']:.0f} |")
        finally:
            await redis.aclose()
            server.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--online", type=int, nargs="+", default=[1000, 10_000], help="users online before")
    parser.add_argument("--logins", type=int, default=200, help="logins timed per case")
    parser.add_argument("--page", type=int, default=1000, help="the gateway's --online-page")
    args = parser.parse_args()
    asyncio.run(main_async(args.online, args.logins, args.page))


if __name__ == "__main__":
    main()
