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
    progress = out / "runs" / "a" / "progress.json"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not progress.exists():
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    assert json.loads(progress.read_text())["max_steps"] == 100000
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
