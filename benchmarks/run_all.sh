#!/usr/bin/env bash
# Runs every CPU benchmark in full, one after another, writing JSON (and the scaling plot) to DIR.
#   bash benchmarks/run_all.sh [DIR] [extra args for every script, e.g. --threads 2]
# Takes about 30 minutes on 2 CPU cores. The GPU benchmark has its own runner: benchmarks/gpu/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DIR=${1:-bench-out}
shift || true
mkdir -p "$DIR"
for name in train_step classify cache scaling; do
  echo "== bench_$name ($(date -u +%H:%M:%S), load: $(cut -d' ' -f1-3 /proc/loadavg))"
  "$PY" "benchmarks/bench_$name.py" --json "$DIR/bench_$name.json" "$@"
done
"$PY" benchmarks/gpu/bench_h100.py --cpu-smoke --json "$DIR/bench_h100_cpu_smoke.json"
