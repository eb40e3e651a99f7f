#!/bin/bash
# runb.sh NAME args... : the same with the tree before the store merge (1157fc5)
# "Before" tree: git archive 1157fc5 | tar -x -C /tmp/bench-before (main just before the store merge).
cd /tmp/bench-before; export PYTHONPATH=/tmp/bench-before
name=$1; shift
out=${OUT:-$(dirname "$(readlink -f "$0")")}/$name
echo "$(date -u +%T) before: $(uptime)" > $out.log
timeout 400 chinwag-loadtest "$@" --no-progress --json $out.json >> $out.log 2>&1
echo "rc=$?" >> $out.log
echo "$(date -u +%T) after: $(uptime)" >> $out.log
python - "$out.json" "$name" <<'PY'
import json,sys
try: r=json.load(open(sys.argv[1]))
except Exception as e: print(sys.argv[2], "NO JSON", e); sys.exit()
keys=["delivered_rate","delivered","lost","duplicated","out_of_order","send_errors","p50_ms","p99_ms","gateway_cpu_us_per_delivered","redis_cpu_us_per_delivered","loadgen_cpu_fraction","generator_limited"]
print(sys.argv[2], {k:r.get(k) for k in keys}, r.get("redis_cpu_s"), r.get("generator_limited_why"))
PY
head -1 $out.log; tail -1 $out.log
