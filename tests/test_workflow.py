"""The everyday commands a new user meets first: list, config, run folders, readable outputs."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from emofer.cli import main
from emofer.commands.train import run_folder
from emofer.config import ConfigError, atomic_write_text, preset_info


def test_list_presets_shows_each_description_and_parent(capsys):
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    assert "emo-llama-tiny-no-fim" in out and "extends" in out
    row = next(line for line in out.splitlines() if line.startswith("│ emo-llama-tiny-no-fim "))
    assert row.rstrip(" │").endswith("emo-llama-tiny")
    assert preset_info("classifier-tiny")["description"].startswith("The supervised baseline without an LLM")
    assert preset_info("emo-llama-tiny-no-fim")["extends"] == "emo-llama-tiny"


def test_list_prints_plain_text_not_rst(capsys):
    assert main(["list", "fusions"]) == 0
    out = capsys.readouterr().out
    assert "face-info-mining" in out
    assert "``" not in out and ":class:" not in out


def test_list_grids_and_templates(capsys):
    assert main(["list", "grids"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main(["list", "templates"]) == 0
    assert "vicuna_v1" in capsys.readouterr().out


def test_config_prints_the_resolved_yaml_with_overrides(capsys):
    assert main(["config", "emo-llama-tiny-no-agr", "train.lr=0.5"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "emo-llama-tiny-no-agr"
    assert cfg["train"]["lr"] == 0.5
    assert cfg["model"]["encoder"]["name"] == "cnn-tiny"  # inherited from emo-llama-tiny
    assert main(["config", "no-such-preset"]) == 2


def test_runs_never_overwrite_an_earlier_run(tmp_path):
    out_dir = tmp_path / "runs"
    first = run_folder(out_dir, "exp", None)
    assert first == out_dir / "exp"
    first.mkdir(parents=True)
    (first / "metrics.json").write_text("{}")
    second = run_folder(out_dir, "exp", None)
    assert second == out_dir / "exp-2"
    second.mkdir()
    (second / "config.yaml").write_text("")
    assert run_folder(out_dir, "exp", None) == out_dir / "exp-3"
    assert run_folder(out_dir, "exp", None, resume=True) == out_dir / "exp-2"  # the latest
    with pytest.raises(ConfigError, match="holds an earlier run: pass --resume"):
        run_folder(out_dir, "exp", str(first))
    assert run_folder(out_dir, "exp", str(first), resume=True) == first
    assert (first / "metrics.json").exists()
    assert run_folder(out_dir, "exp", str(first), overwrite=True) == first and not first.exists()
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_folder(tmp_path / "empty", "exp", None, resume=True)


def test_train_refuses_an_existing_out_folder_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(["train", "-c", "classifier-tiny", "--out", str(out), "--no-progress"]) == 2
    assert "holds an earlier run" in " ".join(capsys.readouterr().err.split())
    assert (out / "metrics.json").read_text() == "{}"


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.csv", "a,b\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.csv").stat().st_mode) == 0o644


def test_a_training_run_prints_each_message_once_without_adverts_or_bars(tmp_path):
    """The console of `emofer train --no-progress`: Lightning's lines once, no litlogger advert,
    no torch deprecation spam from Lightning's pytree helper, no weight-loading bar."""
    import subprocess
    import sys

    overrides = [
        "data.train=[{name: synthfer, split: train, size: 32}]",
        "data.test=[{name: synthfer, split: test, size: 16}]",
        "train.max_steps=2",
    ]
    cmd = [sys.executable, "-m", "emofer.cli", "train", "-c", "llava-tiny", *overrides, "--out", str(tmp_path / "r")]
    done = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, timeout=600)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert text.count("GPU available") == 1
    assert "litlogger" not in text and "LeafSpec" not in text and "Loading weights" not in text
