"""``train.loggers``: Lightning loggers by name; and ``emofer train``/``predict`` import no grid code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import emofer
from emofer.config import ConfigError
from emofer.grid import Grid
from emofer.tracking import build_loggers, group_runs

TINY = [
    "data.train=[{name: synthfer, split: train, size: 32}]",
    "data.test=[{name: synthfer, split: test, size: 14}]",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "train.max_steps=4",
    "train.checkpoint_every=2",
]

SCRIPT = """
import json, sys
from pathlib import Path
from PIL import Image
from emofer.cli import main
out = Path(sys.argv[1])
assert main(["train", "-c", "classifier-tiny", *sys.argv[2:], "--out", str(out), "--no-progress"]) == 0
Image.new("RGB", (48, 48), (120, 90, 60)).save(out / "face.png")
assert main(["predict", str(out / "face.png"), "--model", str(out), "--json"]) == 0
grid = sorted(m for m in sys.modules if m.startswith(("emofer.grid", "emofer.demo", "submitit")))
print("IMPORTED " + json.dumps(grid))
"""


def test_train_and_predict_import_no_grid_code_and_tensorboard_writes_event_files(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", SCRIPT, str(out), *TINY, "train.loggers=[csv, tensorboard]"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.split("IMPORTED ", 1)[1].splitlines()[0])
    assert imported == []  # neither the grid, the demo nor submitit
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "test/uar" in (out / "logs" / "metrics.csv").read_text()  # csv still writes beside it

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out / "tensorboard")).Reload().Tags()["scalars"]
    assert "test/uar" in tags


def test_loggers_default_to_csv_and_name_missing_packages(tmp_path):
    cfg = emofer.load_config("classifier-tiny")
    assert list(cfg.train.loggers) == ["csv"]
    (csv,) = build_loggers(cfg.train.loggers, tmp_path, "run-a")
    assert type(csv).__name__ == "CSVLogger" and Path(csv.log_dir) == tmp_path / "logs"
    import importlib.util

    for name in ("wandb", "mlflow"):
        if importlib.util.find_spec(name) is None:  # not installed here: the error names the package
            with pytest.raises(ConfigError, match=f"needs the '{name}' package"):
                build_loggers([{"name": name}], tmp_path, "run-a")
    with pytest.raises(ConfigError, match=r"train.loggers\[0\]: unknown logger 'neptune'"):
        build_loggers(["neptune"], tmp_path, "run-a")
    with pytest.raises(ConfigError, match="a logger name or a mapping"):
        build_loggers([{"project": "x"}], tmp_path, "run-a")


def test_a_grid_groups_its_runs_under_its_name():
    raw = {
        "name": "abl",
        "base": {"name": "t", "train": {"loggers": ["csv", {"name": "wandb", "project": "fer"}, "mlflow"]}},
        "runs": [{"id": "a"}, {"id": "b", "overrides": {"train.loggers": [{"name": "wandb", "group": "mine"}]}}],
    }
    grid = Grid.load(raw)
    a, b = (group_runs(run.config(), grid.name) for run in grid.runs)
    assert list(a.train.loggers) == ["csv", {"name": "wandb", "project": "fer", "group": "abl"},
                                     {"name": "mlflow", "experiment_name": "abl"}]
    assert list(b.train.loggers) == [{"name": "wandb", "group": "mine"}]  # set by the config: kept
