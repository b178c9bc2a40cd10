#!/usr/bin/env bash
# Runs every CPU benchmark in full, one after another, writing JSON (and the scaling plot) to DIR.
#   bash benchmarks/run_all.sh [DIR] [extra args for every script, e.g. --threads 2]
# Takes about 5 minutes on an idle 2-core machine (08:29-08:34 UTC on 2026-12-01; 30-60 under heavy load). The GPU benchmark has its own runner: benchmarks/gpu/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DIR=${1:-bench-out}
shift || true
mkdir -p "$DIR"
log() { echo "== $1 ($(date -u +%H:%M:%S), load: $(cut -d' ' -f1-3 /proc/loadavg))"; }
log "bench_train_step (tiny, small)"
"$PY" benchmarks/bench_train_step.py --sizes tiny small --json "$DIR/bench_train_step.json" "$@"
for name in memory cache scaling; do
  log "bench_$name"
  "$PY" "benchmarks/bench_$name.py" --json "$DIR/bench_$name.json" "$@"
done
log "bench_classify (tiny, trained here)"
"$PY" benchmarks/bench_classify.py --json "$DIR/bench_classify.json" "$@"
log "bench_classify (small LLM, random weights)"
"$PY" benchmarks/bench_classify.py --size small --samples 224 --json "$DIR/bench_classify_small.json" "$@"
log "gpu/bench_h100 (CPU dry run)"
"$PY" benchmarks/gpu/bench_h100.py --cpu-smoke --json "$DIR/bench_h100_cpu_smoke.json"
