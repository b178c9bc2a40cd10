"""Smoke tests of the benchmark scripts: each runs with ``--quick --json`` and writes well-formed records.

These check that the scripts work from a clean process and that their JSON
has the agreed schema; they assert nothing about speed (timings are the
benchmarks' business, and this machine is shared).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCHEMA = {"name": str, "value": (int, float), "unit": str}


ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def run_script(script: Path, tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / f"{script.stem}.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--json", str(out), *args],
        cwd=tmp_path, env=dict(os.environ, **ENV), capture_output=True, text=True, timeout=300,
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
        assert r["commit"] and re.fullmatch(r"[0-9a-f]{12}", r["config_hash"]), r
    extra = next(r for r in records if r["name"] == "extra")
    assert config_hash_now(extra) == extra["config_hash"]
    return measured


def by_name(records: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in records}


def load_module(path: Path):
    """A benchmark module by its file, imported by its plain name (as the scripts import each other)."""
    for folder in (str(path.parent), str(BENCH)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return importlib.import_module(path.stem)


def config_hash_now(extra: dict) -> str:
    """The config hash the script that wrote ``extra`` computes today for the same arguments."""
    run = extra["detail"]["run"]
    script = next(p for p in (BENCH / run["script"], BENCH / "gpu" / run["script"]) if p.exists())
    module = load_module(script)
    common = load_module(BENCH / "_common.py")
    return common.config_hash(module.run_config(module.parse(run["argv"])))


def test_cited_results_describe_the_code_as_it_is():
    """Every JSON docs/benchmarks.md cites was measured on a config the code still builds (same hash)."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    cited = sorted(set(re.findall(r"benchmarks/results/[\w.-]+/[\w.-]+\.json", text)))
    assert cited, "docs/benchmarks.md cites no result files"
    for rel in cited:
        path = ROOT / rel
        assert path.exists(), f"docs/benchmarks.md cites {rel}, which does not exist"
        records = json.loads(path.read_text())
        extra = next((r for r in records if r["name"] == "extra"), None)
        assert extra is not None and "run" in extra["detail"], f"{rel}: no run config recorded"
        assert all(r.get("commit") and r.get("config_hash") == extra["config_hash"] for r in records), rel
        assert config_hash_now(extra) == extra["config_hash"], (
            f"{rel} was measured on a config that no longer matches the code: re-run "
            f"{extra['detail']['run']['script']} {' '.join(extra['detail']['run']['argv'])} and update the docs"
        )


def test_train_step_compares_the_same_step_with_llava(tmp_path):
    records = by_name(run_script(BENCH / "bench_train_step.py", tmp_path, "--quick"))
    same = [r for n, r in records.items() if n.endswith("fwd+bwd emofer/llava (same loss work)")]
    assert {r["name"].split()[0] for r in same} == {"tiny/layer-2", "tiny/layer-1"}
    for r in same:
        assert r["value"] > 0 and r["target"] == "<= 1.05"
        assert r["spread"][0] <= r["value"] <= r["spread"][1]
        assert len(r["detail"]["ratios"]) == 5 and r["detail"]["image_tokens"] == 16
        # the script refuses to time models whose losses differ; the three losses it saw are recorded
        losses = r["detail"]["losses"]
        assert losses["emofer"] == pytest.approx(losses["llava"], rel=1e-4)
        assert losses["emofer"] == pytest.approx(losses["llava-full"], rel=1e-4)
    assert "tiny/layer-2 fwd+bwd emofer/llava-full (transformers' full-logit loss)" in records
    assert "tiny face-info-mining step / emofer step" in records
    assert not any("compile" in n for n in records)  # --quick leaves compilation out


def test_scaling_fits_a_line_and_plots(tmp_path):
    records = by_name(run_script(BENCH / "bench_scaling.py", tmp_path, "--quick"))
    fit = records["frames: R^2 of linear fit"]
    assert fit["value"] <= 1.0 and fit["detail"]["slope_s"] == pytest.approx(
        records["frames: marginal cost per frame"]["value"] / 1e3
    )
    assert records["batch: largest deviation of a point from the line"]["target"] == "<= 0.15 (linear)"
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
    assert 0 <= records["generate: invalid rate"]["value"] <= 1
    speedup = records["score vs naive: speed-up (end to end)"]
    assert speedup["target"] is None  # the 3x target is set at --size small, where it can be met
    assert len(speedup["detail"]["ratios"]) == 2  # one ratio per batch (32 samples, batch 16)
    assert all(r["target"] is None for n, r in records.items() if "accuracy" in n or "invalid" in n)
    # generate (transformers) against the hand loop it replaced: same greedy answers, timed side by side
    loop = records["generate vs hand loop: time ratio (read-out only)"]
    assert loop["target"] == "<= 1.0" and len(loop["detail"]["ratios"]) == 2
    assert loop["detail"]["same_answers"] == 1.0


def test_memory_compares_score_with_generate_at_equal_batch(tmp_path):
    records = by_name(run_script(BENCH / "bench_memory.py", tmp_path, "--quick"))
    ratio = records["tiny @ batch 8: score / generate peak"]
    assert ratio["target"] == "<= 1.2"
    peaks = ratio["detail"]["peaks_bytes"]
    assert ratio["value"] == pytest.approx(peaks["score"] / peaks["generate"])
    # the measurement sees the read-outs' own tensors: naive holds one full pass's activations, more than 0
    assert min(peaks.values()) > 0


def test_gpu_benchmark_runs_on_the_cpu_at_tiny_dims_through_run_sh(tmp_path):
    """``run.sh`` (package check, PYTHONPATH, commit) and ``bench_h100.py``'s every phase, on the CPU."""
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu" / "run.sh"), "--cpu-smoke", "--quick", "--peak-tflops", "1"],
        cwd=tmp_path, env=dict(os.environ, **ENV, OUT=str(out), PYTHON=sys.executable),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"run.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (out / "bench_h100.log").exists()
    raw = json.loads((out / "bench_h100.json").read_text())
    assert config_hash_now(next(r for r in raw if r["name"] == "extra")) == raw[0]["config_hash"]
    records = by_name(r for r in raw if r["name"] != "extra")
    flops = records["model TFLOP per train step"]["detail"]
    parts = flops["encoder_fwd"] + flops["face_prior_fwd"] + flops["fusion_fwd_bwd"] + flops["llm"]
    assert flops["total"] == pytest.approx(parts) and flops["llm_lora_params"] > 0
    assert 0 < flops["lm_head_positions"] < flops["llm_tokens"]  # the LM head runs over the answer window only
    for on in ("off", "on"):
        assert records[f"LoRA step, checkpointing {on}: samples/s"]["value"] > 0
        assert records[f"LoRA step, checkpointing {on}: MFU"]["target"] == ">= 45%"
    assert records["counted TFLOP per train step (FlopCounterMode)"]["value"] > 0
    for size in (2, 4):
        for mode in ("score", "generate", "naive"):
            assert records[f"{mode} @ batch {size}"]["value"] > 0
        assert records[f"score / generate peak memory @ batch {size}"]["target"] == "<= 1.2"
    assert records["score vs generate @ batch 2"]["target"] is None  # the 2x target is set at batch 32
    assert {n for n in records if n.startswith("video") and n.endswith("step time")} == {
        "video 1 frames: step time", "video 2 frames: step time"}
    llava = records["LLaVA-shaped step: emofer / transformers LLaVA (fwd+bwd, same loss work)"]
    assert llava["target"] == "<= 1.05" and llava["detail"]["trainable"]["emofer"] == llava["detail"]["trainable"]["llava"]
    assert llava["detail"]["losses"]["emofer"] == pytest.approx(llava["detail"]["losses"]["llava"], rel=1e-4)
