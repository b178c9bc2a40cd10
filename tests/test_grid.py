"""Grid mechanics: expansion, run ids, per-run folders, skipping, failures, results files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import DictConfig

from emofer.config import ConfigError
from emofer.grid import DONE, FAILED, Grid, expand, read_status, run_grid
from emofer.grid.folder import read_job

BASE = {"name": "t", "train": {"max_steps": 3, "lr": 0.1}}


def fake_metrics(cfg: DictConfig, run_dir: Path) -> dict:
    """A deterministic stand-in for a training run (grid mechanics only)."""
    if cfg.train.lr > 1:  # a valid config whose run fails (negative rates are refused at load now)
        raise RuntimeError("learning rate above 1: the loss diverged")
    uar = round(min(1.0, cfg.train.lr * cfg.train.max_steps), 4)
    return {
        "uar": uar,
        "war": uar / 2,
        "macro_f1": uar / 3,
        "invalid_rate": 0.0,
        "num_samples": 4,
        "confusion": [[2, 0, 0], [1, 1, 0]],
        "confusion_columns": ["neutral", "happiness", "invalid"],
    }


class Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, cfg: DictConfig, run_dir: Path) -> dict:
        self.calls.append(cfg.name)
        return fake_metrics(cfg, run_dir)


def test_cartesian_grid_ids_join_varied_values():
    runs = expand({"base": BASE, "grid": {"train.lr": [0.1, 0.2], "model.fusion": [{"name": "linear"}, "x"]}})
    assert [r.id for r in runs] == ["lr=0.1+linear", "lr=0.1+x", "lr=0.2+linear", "lr=0.2+x"]
    assert runs[1].varied == {"train.lr": 0.1, "model.fusion": "x"}
    assert runs[2].overrides == {"train": {"lr": 0.2}, "model": {"fusion": {"name": "linear"}}}


def test_explicit_runs_cross_the_grid_and_take_common_overrides():
    raw = {
        "base": BASE,
        "overrides": {"train.max_steps": 5},
        "runs": [{"id": "a"}, {"id": "b", "overrides": ["train.weight_decay=0.5"]}],
        "grid": {"model.prompt.agr": [True, False]},
    }
    runs = expand(raw)
    assert [r.id for r in runs] == ["a+agr=true", "a+agr=false", "b+agr=true", "b+agr=false"]
    cfg = runs[3].config()
    assert (cfg.train.max_steps, cfg.train.weight_decay, cfg.model.prompt.agr, cfg.name) == (
        5,
        0.5,
        False,
        "b+agr=false",
    )


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"base": BASE, "grdi": {}}, "unknown grid key"),
        ({"grid": {"train.lr": [1]}}, "needs 'base:'"),
        ({"base": BASE, "grid": {"train.lr": 0.1}}, "non-empty lists"),
        ({"base": BASE, "runs": [{"id": "a"}, {"id": "a"}]}, "not unique"),
        ({"base": BASE, "runs": [{"name": "a"}]}, r"runs\[0\]"),
    ],
)
def test_bad_grid_files_are_errors(raw, match):
    with pytest.raises(ConfigError, match=match):
        expand(raw)


def test_grid_writes_per_run_folders_and_results(tmp_path):
    grid = Grid.load({"name": "g", "base": BASE, "grid": {"train.lr": [0.1, 0.2]}})
    results = run_grid(grid, tmp_path, runner=fake_metrics)
    assert [r.status for r in results] == [DONE, DONE]
    run_dir = tmp_path / "runs" / "lr=0.2"
    assert (run_dir / "config.yaml").read_text().count("lr: 0.2") == 1
    assert json.loads((run_dir / "metrics.json").read_text())["uar"] == pytest.approx(0.6)
    assert read_status(run_dir)["status"] == DONE
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["run"] for row in table] == ["lr=0.1", "lr=0.2"]
    assert {"run", "uar", "war", "macro_f1", "invalid_rate", "seconds", "train.lr"} <= set(table[0])
    assert float(table[1]["uar"]) == pytest.approx(0.6)
    assert "| lr=0.2 | 0.6000 |" in (tmp_path / "results.md").read_text()
    for png in (tmp_path / "results.png", run_dir / "confusion.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp"))


def test_rerun_skips_finished_runs_and_reruns_changed_ones(tmp_path):
    raw = {"base": BASE, "grid": {"train.lr": [0.1, 0.2]}}
    first = Counting()
    run_grid(Grid.load(raw), tmp_path, runner=first)
    assert first.calls == ["lr=0.1", "lr=0.2"]
    again = Counting()
    results = run_grid(Grid.load(raw), tmp_path, runner=again)
    assert again.calls == []
    assert all(r.skipped for r in results)
    changed = Counting()
    run_grid(Grid.load({**raw, "overrides": {"train.max_steps": 4}}), tmp_path, runner=changed)
    assert changed.calls == ["lr=0.1", "lr=0.2"]


def test_a_failed_run_is_recorded_the_grid_goes_on_and_retry_failed_reruns_it(tmp_path):
    raw = {"base": BASE, "runs": [{"id": "bad", "overrides": {"train.lr": 5.0}}, {"id": "good"}]}
    results = run_grid(Grid.load(raw), tmp_path, runner=fake_metrics)
    assert [r.status for r in results] == [FAILED, DONE]
    status = read_status(tmp_path / "runs" / "bad")
    assert status["status"] == FAILED
    assert "the loss diverged" in status["error"] and "Traceback" in status["traceback"]
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0]["status"] == FAILED and "the loss diverged" in table[0]["error"]

    counting = Counting()
    run_grid(Grid.load(raw), tmp_path, runner=counting)
    assert counting.calls == []
    run_grid(Grid.load(raw), tmp_path, runner=counting, retry_failed=True)
    assert counting.calls == ["bad"]


def test_a_broken_run_config_fails_that_run_only(tmp_path):
    raw = {"base": BASE, "runs": [{"id": "typo", "overrides": {"train.lrr": 1}}, {"id": "ok"}]}
    results = run_grid(Grid.load(raw), tmp_path, runner=fake_metrics)
    assert [r.status for r in results] == [FAILED, DONE]
    assert "train.lr" in results[0].error


def test_an_interrupted_run_restarts_from_scratch(tmp_path):
    raw = {"base": BASE, "runs": [{"id": "a"}]}
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"status": "running"}))
    (run_dir / "leftover.partial").write_text("half")
    counting = Counting()
    run_grid(Grid.load(raw), tmp_path, runner=counting)
    assert counting.calls == ["a"]
    assert not (run_dir / "leftover.partial").exists()
    assert read_status(run_dir)["status"] == DONE


FAULT_GRID = """
name: ft
base: classifier-tiny
overrides:
  data.train: [{name: synthfer, split: train, size: 64}]
  data.test: [{name: synthfer, split: test, size: 28}]
  data.batch_size: 16
  data.eval_batch_size: 16
  train.max_steps: 10
  train.checkpoint_every: 2
grid:
  train.lr: [1.0e-3, 3.0e-3, 1.0e-2]
"""


def _results_without_timings(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _check_files_whole(out: Path) -> None:
    for path in out.rglob("*.json"):
        json.loads(path.read_text())
    for path in out.rglob("predictions.jsonl"):
        assert all(json.loads(line) for line in path.read_text().splitlines())
    assert not [p for p in out.rglob("*.tmp")], "a temporary file survived"


def test_a_grid_killed_mid_run_resumes_to_the_uninterrupted_results(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from emofer.cli import main

    grid_file = tmp_path / "ft.yaml"
    grid_file.write_text(FAULT_GRID)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "emofer.cli", "grid", str(grid_file), "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = killed / "runs" / "lr=0.003"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (second / "checkpoints" / "last.ckpt").exists():
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the grid ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_status(killed / "runs" / "lr=0.001")["status"] == DONE
    assert read_status(second)["status"] == "running"
    done_before = (killed / "runs" / "lr=0.001" / "metrics.json").read_text()

    assert main(["grid", str(grid_file), "--out", str(killed)]) == 0
    assert (killed / "runs" / "lr=0.001" / "metrics.json").read_text() == done_before  # skipped, not rerun
    straight = tmp_path / "straight"
    assert main(["grid", str(grid_file), "--out", str(straight)]) == 0

    assert _results_without_timings(killed) == _results_without_timings(straight)
    for run in ("lr=0.001", "lr=0.003", "lr=0.01"):
        a, b = killed / "runs" / run, straight / "runs" / run
        assert (a / "predictions.jsonl").read_text() == (b / "predictions.jsonl").read_text()
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        for key in ("uar", "war", "macro_f1", "invalid_rate", "confusion", "steps"):
            assert ma[key] == mb[key], (run, key)
    _check_files_whole(killed)


def test_grid_file_paths_resolve_relative_to_the_grid(tmp_path):
    (tmp_path / "base.yaml").write_text("name: from-file\ntrain:\n  lr: 0.25\n")
    (tmp_path / "g.yaml").write_text("base: base.yaml\ngrid:\n  train.max_steps: [1, 2]\n")
    grid = Grid.load(tmp_path / "g.yaml")
    assert grid.name == "g"
    assert [r.config().train.lr for r in grid.runs] == [0.25, 0.25]


def test_a_grid_pretrains_its_face_prior_once_and_hands_it_to_matching_runs(tmp_path):
    prior = {"name": "facexformer-tiny", "image_size": 32, "embed_dim": 8, "decoder_dim": 16}
    raw = {
        "base": {"name": "t", "model": {"face_prior": prior}},
        "pretrain": {
            "face_prior": {
                "prior": prior,
                "data": {"name": "synthfer", "split": "train", "size": 16, "image_size": 32},
                "val_data": {"name": "synthfer", "split": "val", "size": 8, "image_size": 32},
                "steps": 2,
                "batch_size": 8,
                "cache_dir": str(tmp_path / "cache"),
                "progress": False,
            }
        },
        "runs": [
            {"id": "with-prior"},
            {"id": "other-prior", "overrides": {"model.face_prior": {"name": "none"}}},
        ],
    }
    seen: dict[str, str | None] = {}

    def runner(cfg: DictConfig, run_dir: Path) -> dict:
        seen[cfg.name] = cfg.model.face_prior.get("checkpoint")
        return fake_metrics(cfg, run_dir)

    run_grid(Grid.load(raw), tmp_path / "g", runner=runner)
    weights = Path(seen["with-prior"])
    assert weights.name == "face-prior.safetensors" and weights.is_relative_to(tmp_path / "cache")
    assert seen["other-prior"] is None
    meta = json.loads((weights.parent / "meta.json").read_text())
    assert meta["recipe"]["steps"] == 2 and "val/landmark_l1" in meta["held_out"]

    from emofer import FACE_PRIORS

    loaded = FACE_PRIORS.build({**prior, "checkpoint": str(weights)})  # strict load of what was saved
    assert loaded.global_dim == 64
    stamp = weights.stat().st_mtime_ns
    run_grid(Grid.load(raw), tmp_path / "g2", runner=runner)
    assert weights.stat().st_mtime_ns == stamp  # reused from the cache, not trained again


def test_parallel_jobs_give_the_sequential_results_and_record_failures(tmp_path):
    raw = {"name": "p", "base": BASE, "grid": {"train.lr": [0.1, 0.2, 5.0]}}
    sequential = run_grid(Grid.load(raw), tmp_path / "seq", runner=fake_metrics)
    parallel = run_grid(Grid.load({**raw, "jobs": 2}), tmp_path / "par", runner=fake_metrics)
    assert [(r.id, r.status) for r in parallel] == [(r.id, r.status) for r in sequential]
    assert [r.status for r in parallel] == [DONE, DONE, FAILED]
    assert "the loss diverged" in parallel[2].error
    assert _results_without_timings(tmp_path / "par") == _results_without_timings(tmp_path / "seq")
    # each run was a job of its own, recorded in its folder with its log; a rerun skips everything
    for run in parallel:
        job = read_job(tmp_path / "par" / "runs" / run.id)
        assert job["launcher"] == "local" and (Path(job["folder"]) / f"{job['job_id']}_0_log.err").exists()
    again = run_grid(Grid.load(raw), tmp_path / "par", runner=fake_metrics, jobs=2)
    assert all(r.skipped for r in again)


@pytest.mark.parametrize("jobs", [0, "two", True])
def test_grid_jobs_must_be_a_positive_integer(jobs):
    with pytest.raises(ConfigError, match="jobs"):
        Grid.load({"name": "p", "base": BASE, "jobs": jobs})


def chained_metrics(cfg: DictConfig, run_dir: Path) -> dict:
    """Like fake_metrics, and writes a model folder; a run with init_from needs its source's."""
    if cfg.train.init_from is not None and not (Path(cfg.train.init_from) / "weights").exists():
        raise RuntimeError(f"started before {cfg.train.init_from} existed")
    metrics = fake_metrics(cfg, run_dir)
    (run_dir / "model").mkdir()
    (run_dir / "model" / "weights").write_text(cfg.name)
    return metrics


CHAIN = {
    "name": "chain",
    "base": BASE,
    "runs": [
        {"id": "image"},
        {"id": "other", "overrides": {"train.lr": 0.2}},
        {"id": "video", "init_from": "image", "overrides": {"train.max_steps": 1}},
    ],
}


def test_init_from_points_a_run_at_an_earlier_runs_model_at_the_same_grid_point():
    runs = expand({**CHAIN, "grid": {"train.weight_decay": [0.0, 0.1]}})
    assert [(r.id, r.init_from) for r in runs] == [
        ("image+weight_decay=0.0", None),
        ("image+weight_decay=0.1", None),
        ("other+weight_decay=0.0", None),
        ("other+weight_decay=0.1", None),
        ("video+weight_decay=0.0", "image+weight_decay=0.0"),
        ("video+weight_decay=0.1", "image+weight_decay=0.1"),
    ]
    for source in ("video", "nope"):
        bad = {**CHAIN, "runs": [{"id": "video", "init_from": source}, {"id": "image"}]}
        with pytest.raises(ConfigError, match="not the id of an earlier run"):
            expand(bad)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_run_with_init_from_waits_for_its_source_and_reruns_with_it(tmp_path, jobs):
    results = run_grid(Grid.load({**CHAIN, "jobs": jobs}), tmp_path, runner=chained_metrics)
    assert [r.status for r in results] == [DONE, DONE, DONE]  # video started after image's model existed
    saved = json.loads(json.dumps(read_status(tmp_path / "runs" / "video")))
    config = (tmp_path / "runs" / "video" / "config.yaml").read_text()
    assert f"init_from: {(tmp_path / 'runs' / 'image' / 'model').resolve()}" in config
    # the source reruns (its config changed): so does the run started from it, though its own config did not
    changed = {**CHAIN, "runs": [{"id": "image", "overrides": {"train.lr": 0.3}}, *CHAIN["runs"][1:]]}
    again = run_grid(Grid.load({**changed, "jobs": jobs}), tmp_path, runner=chained_metrics)
    assert [(r.id, r.skipped) for r in again] == [("image", False), ("other", True), ("video", False)]
    assert read_status(tmp_path / "runs" / "video")["config_hash"] == saved["config_hash"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_run_whose_init_from_run_failed_is_recorded_failed(tmp_path, jobs):
    broken = {**CHAIN, "runs": [{"id": "image", "overrides": {"train.lr": -1.0}}, *CHAIN["runs"][1:]]}
    results = run_grid(Grid.load({**broken, "jobs": jobs}), tmp_path, runner=chained_metrics)
    assert [r.status for r in results] == [FAILED, DONE, FAILED]
    assert "init_from run 'image' did not finish" in results[2].error
    assert not (tmp_path / "runs" / "video" / "model").exists()
    # fixed and retried, the source runs and then the run that waits on it
    retried = run_grid(Grid.load(CHAIN), tmp_path, runner=chained_metrics, retry_failed=True)
    assert [(r.status, r.skipped) for r in retried] == [(DONE, False), (DONE, True), (DONE, False)]


def test_the_shipped_quickstart_grid_resolves():
    from emofer.demo import QUICKSTART

    grid = Grid.load(QUICKSTART)
    assert [r.id for r in grid.runs] == ["emo-llama-tiny", "no-fim", "no-agr", "from-base", "classifier-tiny", "video"]
    assert {r.id: r.init_from for r in grid.runs}["video"] == "emo-llama-tiny"  # fine-tuned from the image model
    # from-base starts from stage 0's base model, as EMO-LLaMA starts from LLaMA-VID (the ablations: from scratch)
    assert {r.id for r in grid.runs if r.from_base} == {"from-base"}
    configs = {r.id: r.config() for r in grid.runs}
    assert configs["video"].data.num_frames == 4 and configs["emo-llama-tiny"].data.num_frames == 1
    assert configs["classifier-tiny"].eval.mode == "classifier"
    for cfg in configs.values():  # the full test split, with RAF-DB's class frequencies
        (test,) = cfg.data.test
        assert test.name == "synthfer" and test.split == "test" and test.get("size") is None
        assert test.class_distribution == "rafdb"
    assert grid.pretrain["face_prior"]["prior"] == dict(configs["emo-llama-tiny"].model.face_prior)
    from emofer.base_model import base_config, check_no_expression_task

    stage0 = grid.pretrain["base_model"]
    check_no_expression_task(base_config(stage0["preset"], stage0["overrides"]))


def seeded_metrics(cfg: DictConfig, run_dir: Path) -> dict:
    """fake_metrics, moved by the seed (seed 2 with lr 0.2 fails)."""
    if cfg.seed == 2 and cfg.train.lr == 0.2:
        raise RuntimeError("diverged")
    metrics = fake_metrics(cfg, run_dir)
    metrics["uar"] = round(metrics["uar"] - 0.01 * cfg.seed, 4)
    return metrics


def test_a_grid_over_seeds_is_summarised_as_mean_and_std(tmp_path):
    import statistics

    from emofer.commands._console import summary_table
    from emofer.report import summary_rows

    raw = {"name": "s", "base": BASE, "grid": {"train.lr": [0.1, 0.2], "seed": [0, 1, 2]}}
    results = run_grid(Grid.load(raw), tmp_path, runner=seeded_metrics)
    assert [r.id for r in results][:3] == ["lr=0.1+seed=0", "lr=0.1+seed=1", "lr=0.1+seed=2"]
    with open(tmp_path / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [(r["run"], r["seeds"], r["runs"]) for r in summary] == [("lr=0.1", "3", "3"), ("lr=0.2", "2", "3")]
    assert float(summary[0]["uar_mean"]) == pytest.approx(0.29)  # 0.3, 0.29, 0.28
    assert float(summary[0]["uar_std"]) == pytest.approx(statistics.stdev([0.3, 0.29, 0.28]), abs=1e-4)
    assert float(summary[1]["uar_mean"]) == pytest.approx(0.595)  # the failed seed is left out, and counted
    assert "0.2900 ± 0.0100" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").stat().st_size > 0
    rendered = __import__("rich.console").console.Console(width=200, record=True)
    rendered.print(summary_table(summary_rows(results), "over seeds"))
    text = rendered.export_text()
    assert "2/3" in text and "0.5950 ± 0.0071" in text
    # one seed per variant (or none varied): no summary
    single = run_grid(Grid.load({**raw, "grid": {"train.lr": [0.1]}}), tmp_path / "one", runner=seeded_metrics)
    assert summary_rows(single) == [] and not (tmp_path / "one" / "summary.csv").exists()


def test_a_seeded_demo_records_its_spread_and_a_one_seed_demo_reads_it(tmp_path, monkeypatch):
    import yaml

    from emofer.demo import grid_hash, measured_spread, run_demo, spread_file

    grid = tmp_path / "mini.yaml"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))  # a path relative to the grid's folder
    grid.write_text(yaml.safe_dump({"name": "mini", "base": "base.yaml", "runs": [{"id": "a"}, {"id": "b", "overrides": {
        "train.lr": 0.2}}]}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert measured_spread(grid) is None
    result = run_demo(tmp_path / "seeded", grid, seeds=[0, 1, 2], runner=seeded_metrics)
    assert [r.id for r in result.results] == [f"{v}+seed={s}" for v in "ab" for s in range(3)]
    record = json.loads((tmp_path / "seeded" / "seeds.json").read_text())
    assert record["seeds"] == [0, 1, 2] and record["grid_hash"] == grid_hash(grid)
    rows = {r["run"]: r for r in record["summary"]}
    assert rows["a"]["uar_mean"] == pytest.approx(0.29) and rows["b"]["seeds"] == 2  # seed 2 of lr 0.2 fails
    spread_file(grid).write_text(json.dumps(record))  # what a developer ships next to the grid
    assert measured_spread(grid)["current"] is True
    grid.write_text(grid.read_text() + "jobs: 2\n")  # the grid changed since: the record says so
    assert measured_spread(grid)["current"] is False
    grid.write_text(grid.read_text().replace("jobs: 2\n", "") + "# a comment changes nothing\n")
    assert measured_spread(grid)["current"] is True


def test_the_demo_command_prints_the_recorded_spread_beside_a_one_seed_table(tmp_path, monkeypatch, capsys):
    import yaml

    import emofer.demo
    from emofer.cli import main
    from emofer.demo import run_demo, spread_file

    grid = tmp_path / "mini.yaml"
    grid.write_text(yaml.safe_dump({"name": "mini", "base": BASE, "runs": [{"id": "a"}]}))
    real = run_demo
    monkeypatch.setattr(emofer.demo, "run_demo", lambda *a, **k: real(*a, **k, runner=seeded_metrics))
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["demo", "--grid", str(grid), "--out", str(tmp_path / "one")]) == 0
    assert "no measured seed spread" in " ".join(capsys.readouterr().out.split())
    assert main(["demo", "--grid", str(grid), "--out", str(tmp_path / "seeded"), "--seeds", "0", "1", "2"]) == 0
    assert "0.2900 ± 0.0100" in capsys.readouterr().out
    spread_file(grid).write_text((tmp_path / "seeded" / "seeds.json").read_text())
    assert main(["demo", "--grid", str(grid), "--out", str(tmp_path / "one"), ]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "over seeds 0, 1, 2" in text and "0.2900 ± 0.0100" in text and "has changed" not in text
    grid.write_text(grid.read_text() + "jobs: 1\n")
    assert main(["demo", "--grid", str(grid), "--out", str(tmp_path / "one")]) == 0
    assert "has changed since" in " ".join(capsys.readouterr().out.split())


def test_the_shipped_quickstart_spread_was_measured_on_the_shipped_grid():
    from emofer.demo import QUICKSTART, measured_spread

    record = measured_spread(QUICKSTART)
    assert record is not None, "emofer/configs/grids/quickstart.seeds.json is missing: run `emofer demo --seeds 0 1 2`"
    assert record["current"], (
        "quickstart.yaml changed since its seed spread was measured: re-run `emofer demo --seeds 0 1 2` and copy "
        "OUT/seeds.json to emofer/configs/grids/quickstart.seeds.json (and update docs/quickstart.md)"
    )
    ids = [r.id for r in Grid.load(QUICKSTART).runs]
    assert [row["run"] for row in record["summary"]] == ids and all(row["seeds"] == 3 for row in record["summary"])
    # docs/quickstart.md shows this very record
    from emofer.report import summary_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "quickstart.md").read_text()
    for line in summary_markdown(record["summary"]).splitlines()[2:]:
        assert line in doc, f"docs/quickstart.md does not show the recorded spread: {line}"
