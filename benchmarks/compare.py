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
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.compare_load import ChinwagPair, Meter, SocketioPair, run_system
from benchmarks.compare_stack import Stack

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
    row("  servers CPU per delivered DM (µs)", "sat", "server_us_per_dm", "{:,.1f}")
    row("  redis CPU per delivered DM (µs)", "sat", "redis_us_per_dm", "{:,.1f}")
    row("  load generator CPU per delivered DM (µs)", "sat", "gen_us_per_dm", "{:,.1f}")
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
