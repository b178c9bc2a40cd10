"""What `emofer grid` shows while it waits: progress.json of a training run, a live table, plain lines."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from rich.console import Console

from emofer.commands.grid import _Table, watching
from emofer.experiment import PROGRESS_FILE, progress_file
from emofer.grid import Grid
from emofer.grid.folder import write_status
from emofer.grid.watch import describe, grid_states


def test_training_keeps_progress_json_and_prints_lines_into_a_log(tmp_path, capsys):
    callback = progress_file(tmp_path, lines=True, every_s=0.0)
    trainer = SimpleNamespace(global_rank=0, global_step=0, max_steps=40, callback_metrics={})
    for step in range(1, 41):
        trainer.global_step = step
        trainer.callback_metrics = {"train/loss": torch.tensor(2.0 / step)}
        callback.on_train_batch_end(trainer, None, None, None, step)
    record = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert (record["step"], record["max_steps"], round(record["loss"], 6)) == (40, 40, 0.05)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"step {n}/40" for n in range(2, 41, 2)]
    assert lines[-1].startswith("step 40/40  loss 0.0500  ")


def _folders(out: Path) -> Grid:
    grid = Grid.load({"name": "w", "base": {"name": "t"}, "runs": [{"id": r} for r in ("a", "b", "c", "d")]})
    for run in ("a", "b", "c"):
        (out / "runs" / run).mkdir(parents=True)
    write_status(out / "runs" / "a", {"status": "done"})
    (out / "runs" / "a" / "metrics.json").write_text(json.dumps({"uar": 0.8421}))
    write_status(out / "runs" / "b", {"status": "running"})
    (out / "runs" / "b" / PROGRESS_FILE).write_text(json.dumps({"step": 120, "max_steps": 1500, "loss": 1.25}))
    write_status(out / "runs" / "c", {"status": "failed", "error": "RuntimeError: boom"})
    return grid


def test_the_live_table_shows_step_loss_uar_and_errors_from_the_run_folders(tmp_path):
    grid = _folders(tmp_path)
    con = Console(file=io.StringIO(), width=120)
    con.print(_Table(grid, tmp_path))
    text = con.file.getvalue()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│")}
    assert "done" in rows["a"] and "0.8421" in rows["a"]
    assert "running" in rows["b"] and "120/1500" in rows["b"] and "1.2500" in rows["b"]
    assert "failed: RuntimeError: boom" in rows["c"]
    assert "pending" in rows["d"]
    assert [describe(r) for r in grid_states(tmp_path, ["a", "b"])] == [
        "done uar 0.8421",
        "running step 120/1500 loss 1.2500",
    ]


def test_without_a_terminal_each_change_of_state_is_a_line(tmp_path):
    grid = _folders(tmp_path)
    con = Console(file=io.StringIO(), width=200)
    with watching(con, grid, tmp_path, live=False):
        (tmp_path / "runs" / "d").mkdir()
        write_status(tmp_path / "runs" / "d", {"status": "running"})
        time.sleep(1.6)
        write_status(tmp_path / "runs" / "b", {"status": "done"})
        (tmp_path / "runs" / "b" / "metrics.json").write_text(json.dumps({"uar": 0.5}))
        time.sleep(1.6)
    assert con.file.getvalue().splitlines() == ["d: running", "b: done uar 0.5000"]
