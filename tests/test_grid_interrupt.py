"""Ctrl-C and SIGTERM on `emofer grid`: the workers stop, one line says what finished and how to resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emofer.grid import read_status
from emofer.grid.launchers import pid_alive

GRID = """
name: sig
base: classifier-tiny
launcher: {launcher}
jobs: {jobs}
overrides:
  data.train: [{{name: synthfer, split: train, size: 64}}]
  data.test: [{{name: synthfer, split: test, size: 14}}]
  data.batch_size: 8
  train.max_steps: 100000
runs: [{{id: a}}, {{id: b}}]
"""


@pytest.mark.parametrize(
    ("launcher", "jobs", "sig", "code"),
    [("local", 1, signal.SIGINT, 130), ("submitit-local", 2, signal.SIGTERM, 143)],
)
def test_a_signal_stops_the_grid_and_its_workers_with_one_line_and_no_traceback(tmp_path, launcher, jobs, sig, code):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(GRID.format(launcher=launcher, jobs=jobs))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "emofer.cli", "grid", str(grid_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = [out / "runs" / run / "progress.json" for run in ("a", "b")[:jobs]]  # every worker trains
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not all(p.exists() for p in progress):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    assert json.loads(progress[0].read_text())["max_steps"] == 100000
    jobs_before = [json.loads(p.read_text()) for p in out.glob("runs/*/job.json")]
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr and "leaked semaphore" not in stderr, stderr
    assert "Traceback" not in stdout
    lines = [line for line in stdout.splitlines() if line.startswith(signal.Signals(sig).name)]
    assert lines == [
        f"{signal.Signals(sig).name}: grid sig stopped with 0 of 2 runs done; resume with: emofer grid "
        f"{grid_file} --out {out}"
    ]
    assert read_status(out / "runs" / "a")["status"] == "running"  # the next `emofer grid` restarts it
    for job in jobs_before:
        if job["launcher"] != "local":
            assert not pid_alive(int(job["job_id"])), f"job {job['job_id']} outlived the grid"
    assert len(jobs_before) == jobs
    if launcher == "submitit-local":  # the workers' own log says they were stopped
        logs = "".join(p.read_text() for p in Path(out / "jobs").glob("*/*_log.err"))
        assert logs.count("Detected KeyboardInterrupt") == 2


def test_sigterm_while_two_pretraining_stages_train_at_once_stops_them(tmp_path):
    grid_file = tmp_path / "p.yaml"
    cache = tmp_path / "cache"
    grid_file.write_text(
        f"""
name: pre
base: classifier-tiny
jobs: 2
pretrain:
  face_prior: {{prior: {{name: facexformer-tiny, image_size: 32}}, steps: 100000, batch_size: 8, cache_dir: {cache}}}
  base_model:
    cache_dir: {cache}
    overrides: {{train.max_steps: 100000, data.batch_size: 4}}
runs: [{{id: a}}]
"""
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "emofer.cli", "grid", str(grid_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [out / "logs" / f"pretrain-{stage}.log" for stage in ("face_prior", "base_model")]
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not all(p.exists() and p.stat().st_size for p in logs):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)  # the stages would train for hours
    assert proc.returncode == 143, (stdout, stderr)
    assert "Traceback" not in stderr and "leaked semaphore" not in stderr, stderr
    assert stdout.strip().splitlines()[-1].startswith("SIGTERM: grid pre stopped with 0 of 1 runs done; resume with:")
    assert not (out / "runs" / "a").exists()


def test_two_pretraining_stages_at_once_return_the_paths_of_one_after_the_other(tmp_path):
    from emofer.grid.run import _pretrain_at_once, _pretrain_stage

    cache = str(tmp_path / "cache")
    stages = {
        "face_prior": {"prior": {"name": "facexformer-tiny", "image_size": 32}, "steps": 2, "batch_size": 4,
                       "cache_dir": cache},
        "base_model": {"cache_dir": cache, "overrides": {"train": {"max_steps": 2}, "data": {"batch_size": 2}}},
    }
    paths = _pretrain_at_once(stages, tmp_path / "out")
    assert all(p.exists() for p in paths.values())
    assert (tmp_path / "out" / "logs" / "pretrain-face_prior.log").stat().st_size
    assert {name: Path(_pretrain_stage(name, kwargs)) for name, kwargs in stages.items()} == paths  # cached
