"""Steering a grid: --dry-run (validated on the meta device), --only, --rerun, --force, code fingerprints."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
from omegaconf import DictConfig

from emofer.cli import main
from emofer.config import ConfigError, load_config
from emofer.grid import DONE, Grid, read_status, run_grid
from emofer.grid.fingerprint import fingerprint
from emofer.grid.plan import differences, plan_grid

BASE = {"name": "t", "train": {"max_steps": 3, "lr": 0.1}}


class Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, cfg: DictConfig, run_dir: Path) -> dict:
        self.calls.append(cfg.name)
        return {"uar": 0.5, "war": 0.5, "macro_f1": 0.5, "invalid_rate": 0.0, "num_samples": 4}


BAD_GRID = """
name: bad
base: classifier-tiny
runs:
  - {id: ok}
  - {id: wide, overrides: {model.encoder.width: 24}}
  - {id: broken, overrides: {model.fusion: {name: face-info-mining, num_queries: 4, dim: 32}}}
"""


def test_dry_run_prints_runs_and_differences_and_fails_naming_a_run_that_does_not_build(tmp_path, capsys):
    grid_file = tmp_path / "bad.yaml"
    grid_file.write_text(BAD_GRID)
    out = tmp_path / "out"
    assert main(["grid", str(grid_file), "--out", str(out), "--dry-run"]) == 1
    text = capsys.readouterr().out
    assert "ok  run  builds" in text and "wide  run  builds" in text
    assert "model.encoder.width=24" in text and 'model.fusion.name="face-info-mining"' in text
    assert "run broken does not build: WiringError" in text and "face prior" in text
    assert not out.exists(), "a dry run writes nothing"


def test_dry_run_builds_an_llm_run_on_the_meta_device_and_says_what_would_run(tmp_path):
    grid = Grid.load({"name": "q", "base": "emo-llama-tiny", "grid": {"model.prompt.agr": [True, False]}})
    rows = plan_grid(grid, tmp_path)
    assert [(r["run"], r["action"], r["error"]) for r in rows] == [
        ("agr=true", "run", None),
        ("agr=false", "run", None),
    ]
    assert [r["differences"] for r in rows] == [{"model.prompt.agr": True}, {"model.prompt.agr": False}]


def test_differences_show_a_swapped_component_by_its_name():
    a, b = load_config("emo-llama-tiny"), load_config("emo-llama-tiny-no-fim")
    diff_a, diff_b = differences([a, b])
    assert diff_a["model.fusion.name"] == "face-info-mining" and diff_b["model.fusion.name"] == "llama-vid"
    assert not [k for k in diff_a if k.startswith("model.fusion.") and k != "model.fusion.name"]


def test_only_rerun_and_force_choose_what_runs(tmp_path):
    raw = {"name": "g", "base": BASE, "grid": {"train.lr": [0.1, 0.2, 0.3]}}
    first = Counting()
    results = run_grid(Grid.load(raw), tmp_path, runner=first, only=["lr=0.2"])
    assert first.calls == ["lr=0.2"]
    assert [r.status for r in results] == ["pending", DONE, "pending"]
    assert not (tmp_path / "runs" / "lr=0.1").exists()
    second = Counting()
    run_grid(Grid.load(raw), tmp_path, runner=second)
    assert second.calls == ["lr=0.1", "lr=0.3"]
    third = Counting()
    run_grid(Grid.load(raw), tmp_path, runner=third, rerun=["lr=0.3"])
    assert third.calls == ["lr=0.3"]
    fourth = Counting()
    run_grid(Grid.load(raw), tmp_path, runner=fourth, force=True)
    assert fourth.calls == ["lr=0.1", "lr=0.2", "lr=0.3"]
    with pytest.raises(ConfigError, match=r"--rerun: no run 'lr=9' in grid g; its runs: lr=0.1, lr=0.2, lr=0.3"):
        run_grid(Grid.load(raw), tmp_path, runner=fourth, rerun=["lr=9"])


def test_the_command_takes_only_and_rejects_unknown_ids(tmp_path, capsys):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\nbase: classifier-tiny\ngrid:\n  train.lr: [0.1, 0.2]\n")
    assert main(["grid", str(grid_file), "--out", str(tmp_path / "o"), "--only", "lr=0.5"]) == 2
    assert "--only: no run 'lr=0.5'" in capsys.readouterr().err


def test_a_fingerprint_names_the_files_of_the_parts_a_run_uses():
    files = fingerprint(load_config("classifier-tiny"))
    parts = {"emofer/encoders/cnn.py", "emofer/encoders/no_prior.py", "emofer/fusion/projectors.py"}
    assert set(files) == parts | {"emofer/llm/classifier.py"}
    assert all(len(digest) == 16 for digest in files.values())


def test_a_finished_run_whose_plugin_code_changed_runs_again_with_a_warning(tmp_path, monkeypatch, caplog):
    plugin = tmp_path / "my_i19_plugin.py"
    plugin.write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {"name": "g", "base": {**BASE, "custom_imports": ["my_i19_plugin"]}, "runs": [{"id": "a"}]}
    out = tmp_path / "out"
    first = Counting()
    run_grid(Grid.load(raw), out, runner=first)
    assert first.calls == ["a"]
    recorded = read_status(out / "runs" / "a")["code"]
    assert recorded[str(plugin.resolve())] and read_status(out / "runs" / "a")["status"] == DONE
    same = Counting()
    run_grid(Grid.load(raw), out, runner=same)
    assert same.calls == []
    plugin.write_text("SCALE = 2\n")
    again = Counting()
    with caplog.at_level(logging.WARNING, logger="emofer.grid"):
        run_grid(Grid.load(raw), out, runner=again)
    assert again.calls == ["a"]
    assert f"run a: the code of its parts changed since it ran ({plugin.resolve()})" in caplog.text
    rows = plan_grid(Grid.load(raw), out)
    assert rows[0]["action"] == "skip: done"


def test_dry_run_tells_a_run_whose_code_changed(tmp_path, monkeypatch):
    plugin = tmp_path / "my_i19_plugin2.py"
    plugin.write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {"name": "g", "base": {**BASE, "custom_imports": ["my_i19_plugin2"]}, "runs": [{"id": "a"}]}
    run_grid(Grid.load(raw), tmp_path / "out", runner=Counting())
    plugin.write_text("A = 2\n")
    (row,) = plan_grid(Grid.load(raw), tmp_path / "out")
    assert row["action"] == f"run again: code changed ({plugin.resolve()})"


def test_rerun_flags_reach_the_runs_from_the_command(tmp_path, capsys):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(
        textwrap.dedent(
            """
            name: g
            base: classifier-tiny
            overrides:
              data.train: [{name: synthfer, split: train, size: 16}]
              data.test: [{name: synthfer, split: test, size: 14}]
              data.batch_size: 8
              train.max_steps: 2
            runs: [{id: a}, {id: b}]
            """
        )
    )
    out = tmp_path / "o"
    assert main(["grid", str(grid_file), "--out", str(out), "--only", "a"]) == 0
    assert read_status(out / "runs" / "a")["status"] == DONE and not (out / "runs" / "b").exists()
    started = read_status(out / "runs" / "a")
    assert main(["grid", str(grid_file), "--out", str(out), "--only", "a", "--rerun", "a"]) == 0
    assert read_status(out / "runs" / "a")["seconds"] != started["seconds"]
    assert "│ b " in capsys.readouterr().out  # the table shows the run that did not run


def test_dry_run_says_which_runs_start_from_the_base_model_it_would_pretrain(tmp_path):
    from emofer.demo import QUICKSTART

    rows = {r["run"]: r for r in plan_grid(Grid.load(QUICKSTART), tmp_path)}
    assert rows["from-base"]["differences"]["train.init_from"].startswith("base-model (stage 0")
    assert rows["emo-llama-tiny"]["differences"]["train.init_from"] is None
    assert all(r["error"] is None for r in rows.values())
