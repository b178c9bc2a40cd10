"""Smoke tests of the benchmark scripts: each runs with ``--quick --json`` and writes well-formed records.

These check that the scripts work from a clean process and that their JSON
has the agreed schema; they assert nothing about speed (timings are the
benchmarks' business, and this machine is shared).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCHEMA = {"name": str, "value": (int, float), "unit": str}


def run_script(script: Path, tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / f"{script.stem}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script), "--json", str(out), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    records = json.loads(out.read_text())
    measured = [r for r in records if r["name"] != "extra"]
    assert measured, f"{script.name} wrote no records"
    for r in measured:
        for key, kind in SCHEMA.items():
            assert isinstance(r[key], kind), f"{script.name}: {key} of {r} is not {kind}"
        assert math.isfinite(r["value"]), r
        assert r["target"] is None or isinstance(r["target"], str), r
        assert r["meets_target"] is None or isinstance(r["meets_target"], bool), r
        assert (r["target"] is None) == (r["meets_target"] is None), f"target without verdict (or back): {r}"
        assert r["machine"]["date"] and r["machine"]["torch"], r
    return measured


def by_name(records: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in records}


def test_train_step_compares_the_same_step_with_llava(tmp_path):
    records = by_name(run_script(BENCH / "bench_train_step.py", tmp_path, "--quick"))
    ratios = [r for n, r in records.items() if n.endswith("fwd+bwd emofer/llava")]
    assert {r["name"].split()[0] for r in ratios} == {"tiny/layer-2", "tiny/layer-1"}
    for r in ratios:
        assert r["value"] > 0 and r["target"] == "<= 1.05"
        # the script refuses to time two models whose losses differ; the loss it saw is recorded
        assert math.isfinite(r["detail"]["loss"]) and r["detail"]["image_tokens"] == 16
    assert "tiny face-info-mining extra cost" in records


def test_scaling_fits_a_line_and_plots(tmp_path):
    records = by_name(run_script(BENCH / "bench_scaling.py", tmp_path, "--quick"))
    fit = records["frames: R^2 of linear fit"]
    assert fit["value"] <= 1.0 and fit["detail"]["slope_s"] == pytest.approx(
        records["frames: marginal cost per frame"]["value"] / 1e3
    )
    png = tmp_path / "bench_scaling.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cache_reports_first_and_later_epochs(tmp_path):
    records = by_name(run_script(BENCH / "bench_cache.py", tmp_path, "--quick"))
    speedup = records["emo-llama-tiny: later epochs speed-up"]
    detail = speedup["detail"]
    # every sample of the first cached epoch was a miss, every later one a hit; the new run only hits
    samples, epochs = detail["samples"], len(detail["cached_epochs_s"])
    assert detail["cache"] == {"hits": samples * (epochs - 1), "misses": samples}
    assert detail["new_run_cache"] == {"hits": samples, "misses": 0}


def test_classify_scores_equal_naive_and_counts_invalid_answers(tmp_path):
    records = by_name(run_script(BENCH / "bench_classify.py", tmp_path, "--quick"))
    assert records["max |score - naive| log-likelihood"]["value"] < 1e-3
    assert records["score: accuracy"]["value"] == records["naive: accuracy"]["value"]
    assert records["score: invalid rate"]["value"] == 0
    assert 0 <= records["generate: invalid rate"]["value"] <= 1


def test_gpu_benchmark_logic_runs_on_the_cpu_at_tiny_dims(tmp_path):
    records = by_name(run_script(BENCH / "gpu" / "bench_h100.py", tmp_path, "--cpu-smoke", "--quick",
                                 "--peak-tflops", "1"))
    flops = records["model TFLOP per train step"]["detail"]
    parts = flops["encoder_fwd"] + flops["face_prior_fwd"] + flops["fusion_fwd_bwd"] + flops["llm"]
    assert flops["total"] == pytest.approx(parts) and flops["llm_lora_params"] > 0
    for on in ("off", "on"):
        step = records[f"LoRA step, checkpointing {on}: samples/s"]
        assert step["value"] > 0
        mfu = records[f"LoRA step, checkpointing {on}: MFU"]
        assert mfu["target"] == ">= 45%"
    assert records["counted TFLOP per train step (FlopCounterMode)"]["value"] > 0
    assert {n for n in records if n.startswith("score @ batch")} == {"score @ batch 2", "score @ batch 4"}
