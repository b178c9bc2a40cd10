#!/usr/bin/env bash
# Runs the 7B-scale benchmark on a bare GPU machine from a checkout of emofer.
#   1. installs the wheels carried in benchmarks/gpu/wheels/ (fill it first with fetch_wheels.sh)
#      into a side folder, so the image's own packages stay untouched;
#   2. installs emofer itself without dependencies (falls back to the source tree on PYTHONPATH);
#   3. runs bench_h100.py, writing JSON to $OUT (or ./bench-out) and a log beside it.
# Extra arguments go to bench_h100.py, e.g. `bash benchmarks/gpu/run.sh --encoder vit-l --batch 16`.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEST=${OUT:-bench-out}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1

if compgen -G "benchmarks/gpu/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/emofer-site benchmarks/gpu/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/emofer-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e . 2> "$DEST/pip-emofer.log"; then
  echo "pip install -e . failed (see $DEST/pip-emofer.log); using the source tree on PYTHONPATH"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'PY' || { echo "missing packages: fill benchmarks/gpu/wheels/ with fetch_wheels.sh"; exit 1; }
import importlib
for name in ("torch", "transformers", "peft", "timm", "open_clip", "omegaconf", "emofer"):
    mod = importlib.import_module(name)
    print(f"{name} {getattr(mod, '__version__', '?')}")
import torch
print("cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU")
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$DEST/nvidia-smi.csv"
"$PY" benchmarks/gpu/bench_h100.py --json "$DEST/bench_h100.json" "$@" 2>&1 | tee "$DEST/bench_h100.log"
exit "${PIPESTATUS[0]}"
