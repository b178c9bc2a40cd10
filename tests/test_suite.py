"""Suites end to end on SynthFER trees in the DFEW, FERV39k and MAFW layouts: a grid over DFEW's folds,
``emofer suite fer-videos``, prompt robustness and a fitted temperature on a trained tiny model."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from emofer.calibration import expected_calibration_error, fit_temperature, probabilities
from emofer.cli import main
from emofer.config import ConfigError
from emofer.data.synth.export import export
from emofer.evaluation import set_scores
from emofer.suite import Suite, aggregate, list_suites, suite_csv, suite_markdown

FOLD_RUNS = [f"dfew+fold={k}" for k in range(1, 6)]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for layout, folder, seed, folds in (("dfew", "DFEW", 1, 5), ("ferv39k", "FERV39k", 2, 1), ("mafw", "MAFW", 3, 5)):
        export(root / folder, layout, train_size=14, test_size=7, seed=seed, image_size=32, num_frames=2, folds=folds)
    return root


@pytest.fixture(scope="module")
def grid(trees, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("grid")
    (folder / "g.yaml").write_text(
        "name: dfew-folds\nbase: llava-tiny\n"
        "overrides: {train.max_steps: 2, data.batch_size: 8, data.eval_batch_size: 8, data.num_frames: 2}\n"
        f"suite: {{name: fer-videos, sets: [dfew], data_root: {trees}}}\n"
    )
    assert main(["grid", str(folder / "g.yaml"), "--out", str(folder / "out")]) == 0
    return folder / "out"


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_a_grid_trains_every_dfew_fold_and_summarises_them(grid, trees):
    with open(grid / "results.csv") as f:
        results = list(csv.DictReader(f))
    assert [r["run"] for r in results] == FOLD_RUNS and {r["status"] for r in results} == {"done"}
    assert [r["fold"] for r in results] == ["1", "2", "3", "4", "5"]
    for k, run in enumerate(FOLD_RUNS, start=1):  # each fold trains and tests on its own split
        text = (grid / "runs" / run / "config.yaml").read_text()
        assert text.count(f"fold: {k}") == 2 and str(trees / "DFEW") in text
    with open(grid / "summary.csv") as f:
        (summary,) = list(csv.DictReader(f))
    uars = [_metrics(grid / "runs" / run)["uar"] for run in FOLD_RUNS]
    assert (summary["run"], summary["seeds"]) == ("dfew", "5")
    assert float(summary["uar_mean"]) == pytest.approx(statistics.fmean(uars), abs=1e-4)
    assert float(summary["uar_std"]) == pytest.approx(statistics.stdev(uars), abs=1e-4)
    assert "| dfew | 5 of 5 |" in (grid / "summary.md").read_text()


def test_suite_fer_videos_prints_the_table_with_fold_means(grid, trees, tmp_path, capsys):
    model = grid / "runs" / "dfew+fold=1"
    out = tmp_path / "suite"
    assert main(["suite", "fer-videos", "--model", str(model), "--data-root", str(trees), "--out", str(out),
                 "--no-progress"]) == 0
    shown = capsys.readouterr().out
    assert "| method | DFEW UAR | DFEW WAR | FERV39k UAR | FERV39k WAR | MAFW UAR | MAFW WAR |" in shown
    assert "| **this model** |" in shown and "| S2D | 65.45 | 74.81 [1] |" in shown
    for name in ("suite.md", "suite.csv", "suite.png", "suite.json"):
        assert (out / name).stat().st_size > 0
    rows = {r["set"]: r for r in json.loads((out / "suite.json").read_text())["rows"]}
    assert [rows[s]["folds"] for s in ("dfew", "ferv39k", "mafw")] == [5, 1, 5]
    for s in ("dfew", "mafw"):  # the fold mean and sample std, by hand from the per-fold metrics
        wars = [_metrics(out / s / f"fold-{k}")["war"] for k in range(1, 6)]
        assert rows[s]["war_mean"] == pytest.approx(statistics.fmean(wars))
        assert rows[s]["war_std"] == pytest.approx(statistics.stdev(wars))
        assert f"{100 * statistics.fmean(wars):.2f} ± {100 * statistics.stdev(wars):.2f}" in shown
        assert len(_metrics(out / s / "fold-3")["confusion"]) == (7 if s == "dfew" else 11)
    assert rows["ferv39k"]["war_std"] is None
    # fold 1 is the training run's own test split: the suite reproduces its metrics
    again, before = _metrics(out / "dfew" / "fold-1"), _metrics(model)
    assert (again["uar"], again["war"], again["confusion"]) == (before["uar"], before["war"], before["confusion"])
    # calibration: ECE and a reliability diagram per set
    assert (out / "ferv39k" / "reliability-ferv39k-test.png").stat().st_size > 0
    assert 0.0 <= again["calibration"]["dfew1-test"]["ece"] <= 1.0


def test_suite_on_the_grid_folder_evaluates_each_fold_with_its_model(grid, trees, tmp_path):
    out = tmp_path / "per-fold"
    assert main(["suite", "fer-videos", "--sets", "dfew", "--model", str(grid), "--data-root", str(trees),
                 "--out", str(out), "--no-progress"]) == 0
    for k, run in enumerate(FOLD_RUNS, start=1):
        assert _metrics(out / "dfew" / f"fold-{k}")["war"] == _metrics(grid / "runs" / run)["war"]
    with open(grid / "summary.csv") as f:
        summary = next(csv.DictReader(f))
    (row,) = json.loads((out / "suite.json").read_text())["rows"]
    assert round(row["uar_mean"], 4) == float(summary["uar_mean"])


def test_prompt_robustness_on_a_trained_tiny_model(grid, tmp_path, capsys):
    model = grid / "runs" / "dfew+fold=1"
    variants = ["eval.prompt_variants.orders=2", "eval.prompt_variants.wordings=true",
                "eval.prompt_variants.no_options=true"]
    assert main(["eval", "--ckpt", str(model), *variants, "--out", str(tmp_path / "score"), "--no-progress"]) == 0
    shown = capsys.readouterr().out
    metrics = _metrics(tmp_path / "score")
    (rows,) = [r["variants"] for r in json.loads((tmp_path / "score" / "prompt_variants.json").read_text()).values()]
    assert len(rows) == 12 and rows[0]["variant"] == "ferid"
    assert "in the video?" in rows[0]["question"] and "{" not in rows[-1]["question"]
    assert (rows[0]["uar"], rows[0]["war"]) == (metrics["uar"], metrics["war"])  # ferid is the plain evaluation
    assert "| dfew1-test | ferid/order-2 |" in shown and "| dfew1-test | 12 |" in shown and "±" in shown
    spread = metrics["prompt_variants"]["dfew1-test"]
    assert spread["war_worst"] == min(r["war"] for r in rows)
    assert spread["war_std"] == pytest.approx(statistics.stdev(r["war"] for r in rows))
    # generate: the answers are parsed, and each variant reports its invalid rate
    generate = ["eval.mode=generate", "eval.max_new_tokens=3", "eval.prompt_variants.orders=1"]
    assert main(["eval", "--ckpt", str(model), *generate, "--out", str(tmp_path / "gen"), "--no-progress"]) == 0
    metrics = _metrics(tmp_path / "gen")
    rows = next(iter(json.loads((tmp_path / "gen" / "prompt_variants.json").read_text()).values()))["variants"]
    assert [r["variant"] for r in rows] == ["ferid", "ferid/order-1"]
    assert rows[0]["invalid_rate"] == metrics["invalid_rate"] and "calibration" not in metrics
    assert not (tmp_path / "gen" / "calibration.json").exists()


def test_a_temperature_fitted_on_validation_is_applied_at_test_time(grid, trees, tmp_path, capsys):
    model = grid / "runs" / "dfew+fold=1"
    val = f"data.val=[{{name: dfew, root: {trees / 'DFEW'}, split: train, fold: 2}}]"
    out = tmp_path / "cal"
    assert main(["eval", "--ckpt", str(model), val, "eval.temperature=fit", "eval.calibration_bins=5",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "calibration.json").read_text())
    val_scores = set_scores(out / "val", _metrics(out / "val"))
    assert list(val_scores) == report["fitted_on"] == ["dfew2-train"]
    (scores, targets, _), = val_scores.values()
    assert report["temperature"] == pytest.approx(fit_temperature([scores], [targets]))
    (test_scores, test_targets, _), = set_scores(out, _metrics(out)).values()
    (entry,) = report["sets"].values()
    t = report["temperature"]
    assert entry["ece"] == pytest.approx(expected_calibration_error(probabilities(test_scores, t), test_targets, 5))
    assert entry["ece_t1"] == pytest.approx(expected_calibration_error(probabilities(test_scores), test_targets, 5))
    # by hand from the bins: the sample-weighted |accuracy - confidence|
    n = len(test_targets)
    assert entry["ece"] == pytest.approx(
        sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in entry["bins"] if b["count"]), abs=1e-6)
    assert _metrics(out)["calibration"]["temperature"] == t
    assert main(["eval", "--ckpt", str(model), "eval.temperature=fit", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "data.val lists none" in capsys.readouterr().err


def test_the_table_from_fixed_fold_metrics():
    suite = Suite.load("fer-videos")
    dfew = suite.sets[0]
    points = [{"uar": 0.5, "war": 0.6, "invalid_rate": 0.0, "num_samples": 10},
              {"uar": 0.7, "war": 0.8, "invalid_rate": 0.1, "num_samples": 12}]
    row = aggregate(dfew, points)
    assert (row["folds"], row["num_samples"]) == (2, 22)
    assert row["uar_mean"] == pytest.approx(0.6) and row["uar_std"] == pytest.approx(0.1414213562)
    refs = {"dfew": [{"method": "M", "uar": 50.0, "war": None, "source": "Someone, arXiv 0000.00000"}]}
    text = suite_markdown([row], refs, "t")
    assert "| **this model** | 60.00 ± 14.14 | 70.00 ± 14.14 |" in text
    assert "| M | 50.00 | — [1] |" in text and "1. Someone, arXiv 0000.00000" in text
    lines = suite_csv([row], refs).splitlines()
    assert lines[1].startswith("dfew,this model,measured,2,60.0,14.1421,70.0,14.1421,5.0,")
    assert lines[2] == "dfew,M,,,50.0,,,,,,\"Someone, arXiv 0000.00000\""


def test_suite_files_are_checked():
    assert {"emo-llama-paper", "fer-images", "fer-videos"} <= set(list_suites())
    assert [s.id for s in Suite.load("fer-images").sets] == ["rafdb", "affectnet-7", "affectnet-8", "ferplus"]
    assert len(Suite.load("emo-llama-paper").sets) == 7
    with pytest.raises(ConfigError, match="Did you mean 'fer-videos'"):
        Suite.load("fer-video")
    with pytest.raises(ConfigError, match="leaves root, split and fold"):
        Suite.load({"sets": [{"id": "x", "dataset": {"name": "dfew", "fold": 1}}]})
    with pytest.raises(ConfigError, match="no set"):
        Suite.load("fer-videos").select(["rafdb"])
    import emofer
    from emofer.suite import run_suite

    cfg = emofer.load_config("llava-tiny", ["eval.temperature=fit"])
    with pytest.raises(ConfigError, match=r"set\(s\) \['dfew', 'ferv39k', 'mafw'\] of suite fer-videos have no validation"):
        run_suite(Suite.load("fer-videos"), cfg, "no-model", "no-out")
