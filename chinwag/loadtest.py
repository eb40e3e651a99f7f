"""``chinwag-loadtest``: drive real WebSocket clients against gateways and measure.

    chinwag-loadtest dm --start-cluster 2 --clients 100 --rate 1000 --duration 10
    chinwag-loadtest dm --urls ws://h:9001,ws://h:9002 --ramp --max-p99-ms 250
    chinwag-loadtest broadcast --start-cluster 2 --clients 300 --rate 20 --duration 10
    chinwag-loadtest group --start-cluster 2 --clients 200 --group-size 10 --rate 500
    chinwag-loadtest login-storm --start-cluster 2 --clients 1000
    chinwag-loadtest idle --start-cluster 1 --clients 2000 --duration 5
    chinwag-loadtest browser --start-cluster 2 --clients 20 --messages 5

    chinwag-loadtest dm --start-cluster 2 --clients 200 --rate 8000 --workers 2

Every client is a :class:`client.chat.ChatClient`.  Each message body carries
the run id, the sender's number, its sequence number and ``perf_counter_ns``
(``r=<run> s=<sender> n=<seq> t=<ns>``), so latency is measured in the process
that owns both ends (``--workers N`` keeps every DM pair and group in one
worker; a broadcast's senders and readers share one machine clock) and losses,
duplicates and reordering are counted per sender and receiver.  Latencies go
into log-bucketed histograms that merge across workers.  With
``--start-cluster`` the server processes' CPU time and RSS are measured with
psutil too, next to the generator's own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chinwag.cluster import Cluster, free_base_port
from chinwag.loadtest_measure import Progress
from chinwag.loadtest_scenarios import LoadTest
from chinwag.loadtest_workers import run_workers
from common.runtime import loop_factory

__all__ = ["LOAD_ENV", "LoadTest", "Progress", "main", "report"]

# Server settings for a load test: no per-user or per-IP limits, cheap argon2id.
LOAD_ENV = {
    "CHINWAG_RATE_MESSAGES": "0",
    "CHINWAG_IP_CONNECTIONS": "0",
    "CHINWAG_IP_LOGINS": "0",
    "CHINWAG_ARGON2_MEMORY_KIB": "1024",
    "CHINWAG_ARGON2_TIME_COST": "1",
    "CHINWAG_LOG_LEVEL": "WARNING",
}
def server_env(args: argparse.Namespace) -> dict[str, str]:
    """LOAD_ENV with the ``--server-env`` overrides: e.g. the per-user rate limit back on, to measure its cost."""
    return {**LOAD_ENV, **dict(item.split("=", 1) for item in args.server_env)}


def _print_report(scenario: str, result: dict[str, Any]) -> None:
    print(f"chinwag-loadtest {scenario}")
    for key, value in result.items():
        if key != "ramp_steps":
            print(f"  {key:32} {value}")
    reasons = list(result.get("generator_limited_why", []))
    for step in result.get("ramp_steps", []):
        reasons += [f"ramp {step['rate']}/s: {why}" for why in step.get("generator_limited_why", [])]
    for why in reasons:
        print(f"WARNING: the load generator was the limit ({why}): the numbers measure it, not the server")


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


async def _main(args: argparse.Namespace) -> tuple[dict[str, Any], Callable[[Path], None]]:
    cluster: Cluster | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if args.start_cluster:
            tmp = tempfile.TemporaryDirectory(prefix="chinwag-loadtest-")
            base_port = free_base_port("127.0.0.1", args.start_cluster)
            cluster = Cluster(gateways=args.start_cluster, base_port=base_port, data_dir=Path(tmp.name),
                              log_level="WARNING", extra_env=server_env(args), redis_shards=args.redis_shards)
            await asyncio.to_thread(cluster.up)
            urls = cluster.urls()
        else:
            urls = [u.strip() for u in args.urls.split(",") if u.strip()]
        plot: Callable[[Path], None]
        if args.workers > 1:
            result, workers = await run_workers(args, urls, cluster)
            plot = workers.plot
        else:
            test = LoadTest(args, urls, cluster)
            try:
                result = await {"dm": test.dm, "broadcast": test.broadcast,
                                "group": test.group, "login-storm": test.login_storm,
                                "idle": test.idle}[args.scenario]()
            finally:
                await test.close()
            plot = test.plot
        result = {"scenario": args.scenario, "urls": urls, "clients": args.clients,
                  "rate": args.rate, "duration": args.duration, "presence": args.presence,
                  "cluster_started": bool(cluster), "redis_shards": args.redis_shards if cluster else None,
                  "server_env": server_env(args) if cluster else None, **result}
        return result, plot
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.down)
        if tmp is not None:
            tmp.cleanup()


def browsers_unavailable(chromium: str) -> str | None:
    """Why the browser scenario cannot run here, or None: asked before any cluster starts."""
    try:
        importlib.import_module("playwright.async_api")
    except ImportError as exc:
        return f"the browser scenario needs playwright (the dev extra: pip install -e '.[dev]') [{exc}]"
    if not shutil.which(chromium):
        return f"the browser scenario drives Chromium, and {chromium} is not there (apt install chromium)"
    return None


def _browser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """N headless tabs of the web client (chinwag/loadtest_browser.py): a smoke, with gateway CPU per tab."""
    if args.urls is not None:
        parser.error("browser starts its own cluster: use --start-cluster N, not --urls")
    if args.workers > 1 or args.plot or args.messages < 1:
        parser.error("browser: one process, no --plot, and --messages at least 1")
    if why := browsers_unavailable(args.chromium):
        print(f"chinwag-loadtest: {why}", file=sys.stderr)
        return 2
    from chinwag.loadtest_browser import run  # imports nothing optional until it runs

    try:
        result = asyncio.run(asyncio.wait_for(
            run(args.clients, args.messages, args.start_cluster or 1, args.chromium, 60.0),  # 60 s a step
            args.timeout))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"chinwag-loadtest: {exc}", file=sys.stderr)
        return 2
    return report(args, {"scenario": "browser", **result}, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chinwag-loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["dm", "broadcast", "group", "login-storm", "idle", "browser"])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--urls", help="comma-separated gateway URLs to load")
    where.add_argument("--start-cluster", type=int, metavar="N", help="start Redis, presence and N gateways")
    parser.add_argument("--redis-shards", type=int, default=1, metavar="N",
                        help="with --start-cluster: more than 1 starts a Redis Cluster of N masters (and N "
                             "replicas) under the gateways, and reports each master's CPU (default 1: one Redis)")
    parser.add_argument("--server-env", action="append", default=[], metavar="CHINWAG_X=VALUE",
                        help="with --start-cluster: a setting for every node over the load test's own "
                             "(e.g. CHINWAG_RATE_MESSAGES=1000000 to run the per-user rate step); repeatable")
    parser.add_argument("--clients", type=int, default=100, help="connected clients (users) (default 100)")
    parser.add_argument("--rate", type=float, default=1000, help="offered messages/s (default 1000)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of sending / holding (default 10)")
    parser.add_argument("--senders", type=int, default=1, help="broadcast: how many clients send (default 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="generator processes, each owning a slice of the clients (default 1: this process)")
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
    parser.add_argument("--messages", type=int, default=5, help="browser: broadcasts each tab sends (default 5)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="browser: the Chromium to drive (Debian's; nothing is downloaded)")
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
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.redis_shards < 1 or (args.redis_shards > 1 and not args.start_cluster):
        parser.error("--redis-shards must be at least 1, and more than 1 only with --start-cluster")
    if args.redis_shards > 1 and args.scenario == "browser":
        parser.error("browser runs on one Redis: leave out --redis-shards")
    if args.workers > 1 and args.ramp:
        parser.error("--ramp runs in one process: leave out --workers")
    if any("=" not in item or not item.startswith("CHINWAG_") for item in args.server_env) or (
            args.server_env and not args.start_cluster):
        parser.error("--server-env takes CHINWAG_NAME=VALUE, and only with --start-cluster")
    if args.urls is not None and not args.urls.strip():
        parser.error("--urls is empty")
    if args.plot and args.scenario not in PLOTTED:
        parser.error(f"--plot draws message latencies: only {', '.join(PLOTTED)} measure them")
    if args.scenario == "browser":
        return _browser(parser, args)
    if args.plot and (why := plotting_unavailable()):
        print(f"chinwag-loadtest: {why}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result, plot = runner.run(_main(args))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"chinwag-loadtest: {exc}", file=sys.stderr)
        return 2
    return report(args, result, plot if args.plot else None)


if __name__ == "__main__":
    raise SystemExit(main())
