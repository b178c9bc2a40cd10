#!/usr/bin/env bash
# Runs the 7B-scale benchmark on a bare GPU machine from a checkout of emofer, in one command:
#   bash benchmarks/gpu/run.sh [--quick] [args for bench_h100.py]
#   1. every package the benchmark imports comes from the image; what the image lacks is installed
#      from the wheels carried in the tree (benchmarks/gpu/wheels/: open_clip, ftfy, wcwidth,
#      omegaconf) into a side folder, so the image's own packages stay untouched; a package found
#      in neither is named and the run stops before it starts;
#   2. emofer itself runs from this source tree (PYTHONPATH), nothing is installed for it;
#   3. runs bench_h100.py, writing JSON to $OUT (or ./bench-out) and a log beside it.
# Full run: ~4-6 minutes of an H100/H200 after start-up; --quick: ~3 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEST=${OUT:-bench-out}
SITE=${EMOFER_SITE:-/tmp/emofer-site}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1
export EMOFER_COMMIT=${EMOFER_COMMIT:-$(git rev-parse HEAD 2>/dev/null || cat benchmarks/gpu/COMMIT 2>/dev/null || echo unknown)}

# import name -> wheel file prefix (for the packages the image may lack)
missing=$("$PY" - <<'PY'
import importlib.util
needed = {"torch": None, "transformers": None, "peft": None, "timm": None, "safetensors": None, "yaml": None,
          "rich": None, "lightning": None, "open_clip": "open_clip_torch", "ftfy": "ftfy", "wcwidth": "wcwidth",
          "omegaconf": "omegaconf"}
print(" ".join(f"{name}:{wheel or '-'}" for name, wheel in needed.items() if importlib.util.find_spec(name) is None))
PY
)
wheels=()
for item in $missing; do
  name=${item%%:*}; prefix=${item#*:}
  found=$(compgen -G "benchmarks/gpu/wheels/${prefix}-*.whl" | head -n 1)
  if [ "$prefix" = "-" ] || [ -z "$found" ]; then
    echo "run.sh: python package '$name' is neither in this image nor carried in benchmarks/gpu/wheels/." >&2
    echo "        Install it into the image, or add its wheel (benchmarks/gpu/fetch_wheels.sh lists the carried ones)." >&2
    exit 2
  fi
  wheels+=("$found")
done
if [ ${#wheels[@]} -gt 0 ]; then
  echo "installing from carried wheels into $SITE: ${wheels[*]}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || { echo "run.sh: pip could not install ${wheels[*]}" >&2; exit 2; }
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'PY' || { echo "run.sh: an import failed (above)" >&2; exit 2; }
import importlib
for name in ("torch", "transformers", "peft", "timm", "open_clip", "omegaconf", "emofer"):
    mod = importlib.import_module(name)
    print(f"{name} {getattr(mod, '__version__', '?')}")
import torch
print("cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU")
PY
echo "emofer commit $EMOFER_COMMIT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$DEST/nvidia-smi.csv"
"$PY" benchmarks/gpu/bench_h100.py --json "$DEST/bench_h100.json" "$@" 2>&1 | tee "$DEST/bench_h100.log"
exit "${PIPESTATUS[0]}"
