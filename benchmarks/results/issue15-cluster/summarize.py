"""Summarise the issue-15 runs in this folder: one line a run, then medians per configuration.

    python benchmarks/results/issue15-cluster/summarize.py

A run is ``<series>-<config>.json`` (chinwag-loadtest --json) next to ``<series>-<config>.log``
(the printed report between two ``uptime`` lines: the machine's load average before and after).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PER_DM = ("gateway_cpu_us_per_delivered", "redis_cpu_us_per_delivered", "redis_replica_cpu_us_per_delivered")


def runs() -> list[tuple[str, dict[str, Any], list[str]]]:
    out = []
    for path in sorted(HERE.glob("*.json")):
        log = path.with_suffix(".log").read_text()
        out.append((path.stem, json.loads(path.read_text()), re.findall(r"load average: ([\d.]+)", log)))
    return out


def shares(result: dict[str, Any]) -> str:
    shard = list((result.get("redis_shard_cpu_s") or {}).values())
    total = sum(shard)
    return "/".join(f"{100 * v / total:.0f}" for v in shard) if len(shard) > 1 and total else "-"


def main() -> None:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, r, load in runs():
        groups[name.split("-", 1)[1]].append(r)
        per_dm = " ".join(f"{r.get(k)}" for k in PER_DM)
        print(f"{name:26} load {load[0]}-{load[-1]}  delivered {r['delivered']}/{r['expected_deliveries']} "
              f"lost {r['lost']} dup {r['duplicated']} ooo {r['out_of_order']}  p50 {r['p50_ms']} p99 {r['p99_ms']} ms"
              f"  µs/DM gw redis replica: {per_dm}  shard shares % {shares(r)}"
              f"  generator {r['loadgen_cpu_fraction']} limited {r['generator_limited']}")
    print()
    for config, rs in sorted(groups.items()):
        cells = []
        for key in PER_DM:
            values = [r[key] for r in rs if r.get(key) is not None]
            if values:
                cells.append(f"{key.split('_cpu')[0]} {statistics.median(values):.1f} ({min(values)}-{max(values)})")
        p50 = sorted(r["p50_ms"] for r in rs)
        print(f"{config:24} runs {len(rs)}  " + "  ".join(cells) + f"  p50s {p50}")


if __name__ == "__main__":
    main()
