#!/usr/bin/env bash
# Refreshes the wheels carried in benchmarks/gpu/wheels/ (committed: run.sh installs from them whatever the GPU image lacks; run where PyPI is reachable).
# The image (Python 3.12, torch, torchvision, timm, transformers, peft, lightning, torchmetrics, einops,
# opencv, rich, pyyaml, regex, tqdm, huggingface-hub, safetensors) lacks open_clip and omegaconf.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
mkdir -p wheels
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 omegaconf==2.4.0
ls -l wheels
