"""Grid launchers: submitit-local equals local, preemption continues from the checkpoint, SLURM's sbatch
parameters and afterok dependencies (a fake sbatch/sacct on PATH), GPU packing, ``--status``, re-attach."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import DictConfig

from emofer.config import ConfigError, atomic_write_text
from emofer.grid import DONE, FAILED, Grid, grid_status, read_status, run_grid
from emofer.grid.folder import read_job, record_job

BASE = {"name": "t", "train": {"max_steps": 3, "lr": 0.1}}
CHAIN = {
    "name": "chain",
    "base": BASE,
    "runs": [
        {"id": "image"},
        {"id": "other", "overrides": {"train.lr": 0.2}},
        {"id": "video", "init_from": "image", "overrides": {"train.max_steps": 1}},
    ],
}
STEP_S = 0.3


def stepping_runner(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict:
    """A stand-in for training: ``max_steps`` steps of a deterministic recurrence, a checkpoint after each.

    A run with ``init_from`` starts from its source's final state (its ``model/state``); a resumed run
    from its checkpoint. Every start is logged in ``starts.jsonl`` (pid, step it started from).
    """
    ckpt = run_dir / "checkpoints" / "last.json"
    x = cfg.train.lr
    if cfg.train.init_from is not None:
        x = json.loads((Path(cfg.train.init_from) / "state").read_text())["x"]
    state = {"step": 0, "x": x}
    if resume and ckpt.exists():
        state = json.loads(ckpt.read_text())
    with open(run_dir / "starts.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "from_step": state["step"], "resume": resume}) + "\n")
    ckpt.parent.mkdir(exist_ok=True)
    while state["step"] < cfg.train.max_steps:
        time.sleep(STEP_S)
        state = {"step": state["step"] + 1, "x": round((state["x"] * 1.7 + 0.13) % 1, 6)}
        atomic_write_text(ckpt, json.dumps(state))
    (run_dir / "model").mkdir(exist_ok=True)
    (run_dir / "model" / "state").write_text(json.dumps(state))
    uar = round(state["x"], 4)
    return {"uar": uar, "war": uar, "macro_f1": uar, "invalid_rate": 0.0, "num_samples": 4, "steps": state["step"]}


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_submitit_local_gives_the_local_results(tmp_path):
    local = run_grid(Grid.load(CHAIN), tmp_path / "local", runner=stepping_runner)
    sub = run_grid(Grid.load(CHAIN), tmp_path / "sub", runner=stepping_runner, launcher="submitit-local")
    assert [r.status for r in sub] == [DONE, DONE, DONE]
    assert _rows(tmp_path / "sub") == _rows(tmp_path / "local")
    assert [r.metrics["uar"] for r in sub] == [r.metrics["uar"] for r in local]
    for run in ("image", "other", "video"):  # each a job of its own process, recorded in its folder
        job = read_job(tmp_path / "sub" / "runs" / run)
        assert job["launcher"] == "submitit-local" and int(job["job_id"]) != os.getpid()
        starts = (tmp_path / "sub" / "runs" / run / "starts.jsonl").read_text().splitlines()
        assert json.loads(starts[0])["pid"] != os.getpid()
    # video started from image's final state, so image had finished before video's job started
    assert read_status(tmp_path / "sub" / "runs" / "video")["status"] == DONE
    again = run_grid(Grid.load(CHAIN), tmp_path / "sub", runner=stepping_runner, launcher="submitit-local")
    assert all(r.skipped for r in again)


def _task_pid(run_dir: Path, min_step: int, timeout: float = 60) -> int:
    """The pid of the process running a run, once its checkpoint has reached ``min_step``."""
    deadline = time.time() + timeout
    ckpt = run_dir / "checkpoints" / "last.json"
    while time.time() < deadline:
        if ckpt.exists() and json.loads(ckpt.read_text())["step"] >= min_step:
            return json.loads((run_dir / "starts.jsonl").read_text().splitlines()[-1])["pid"]
        time.sleep(0.05)
    raise AssertionError(f"{run_dir.name} never reached step {min_step}")


def test_a_preempted_job_is_requeued_and_continues_from_its_checkpoint(tmp_path):
    raw = {**CHAIN, "overrides": {"train.max_steps": 8}}
    straight = run_grid(Grid.load(raw), tmp_path / "straight", runner=stepping_runner)
    out = tmp_path / "preempted"
    done: list = []
    thread = threading.Thread(
        target=lambda: done.append(run_grid(Grid.load(raw), out, runner=stepping_runner, launcher="submitit-local"))
    )
    thread.start()
    # what SLURM sends before preempting a job (submitit's preemption signal) goes to image's task
    pid = _task_pid(out / "runs" / "image", min_step=3)
    os.kill(pid, signal.SIGUSR2)
    thread.join(timeout=120)
    assert not thread.is_alive() and [r.status for r in done[0]] == [DONE, DONE, DONE]
    starts = [json.loads(s) for s in (out / "runs" / "image" / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[1]["resume"] and 3 <= starts[1]["from_step"] < 8  # from its checkpoint
    status = read_status(out / "runs" / "image")
    assert status["attempts"] == 2
    assert _rows(out) == _rows(tmp_path / "straight")
    assert [r.metrics for r in done[0]] == [r.metrics for r in straight]


FAKE_SLURM = {
    "sbatch": 'n=$(cat "$FAKE_SLURM/count" 2>/dev/null || echo 12)\necho $((n + 1)) > "$FAKE_SLURM/count"\n'
    'cp "$1" "$FAKE_SLURM/sbatch-$n.sh"\necho "Submitted batch job $n"\n',
    "sacct": 'echo "JobID|State|NodeList"\ncat "$FAKE_SLURM/states" 2>/dev/null\n',
    "scancel": "exit 0\n",
    "srun": 'exec "$@"\n',
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` (records the script, answers a job id), ``sacct`` (answers what the test sets), ``srun``."""
    import submitit

    state = tmp_path / "slurm"
    (state / "bin").mkdir(parents=True)
    for name, body in FAKE_SLURM.items():
        path = state / "bin" / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM", str(state))
    monkeypatch.setenv("PATH", f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}")
    submitit.SlurmJob.watcher.clear()
    yield state
    submitit.SlurmJob.watcher.clear()


def _set_states(state: Path, states: dict[str, str]) -> None:
    (state / "states").write_text("".join(f"{job}|{s}|node1\n" for job, s in states.items()))


def _run_slurm_job(jobs_dir: Path, job_id: str) -> None:
    """Runs a submitted job the way SLURM's srun does on the node (task 0 of one)."""
    import subprocess

    main, _, task = job_id.partition("_")
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": main, "SLURM_PROCID": "0"}
    env.update(SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if task:
        env.update(SLURM_ARRAY_JOB_ID=main, SLURM_ARRAY_TASK_ID=task, SLURM_JOB_ID=str(int(main) + 100))
    cmd = [sys.executable, "-u", "-m", "submitit.core._submit", str(jobs_dir / "%j")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


SLURM_GRID = {
    **CHAIN,
    "name": "emo-llama-7b-ablation",
    "launcher": {
        "name": "slurm",
        "partition": "gpu",
        "nodes": 2,
        "gpus_per_node": 8,
        "cpus_per_task": 10,
        "mem_gb": 480,
        "timeout_min": 720,
        "account": "fer",
        "qos": "high",
        "slurm_additional_parameters": {"mail-type": "END"},
        "poll_s": 0.1,
    },
}


def test_slurm_submits_an_array_and_an_afterok_job_and_collects_them(tmp_path, fake_slurm, capsys):
    out = tmp_path / "g"
    queued = run_grid(Grid.load(SLURM_GRID), out, runner=stepping_runner, wait=False)
    assert [r.status for r in queued] == ["queued"] * 3
    array, video = (fake_slurm / "sbatch-12.sh").read_text(), (fake_slurm / "sbatch-13.sh").read_text()
    for flag in (
        "--partition=gpu", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10",
        "--mem=480GB", "--time=720", "--account=fer", "--qos=high", "--mail-type=END",
        "--job-name=emo-llama-7b-ablation", "--signal=USR2@90",
    ):
        assert f"#SBATCH {flag}\n" in array and f"#SBATCH {flag}\n" in video, flag
    assert "#SBATCH --array=0-1%2\n" in array and "--dependency" not in array  # image and other: one array
    assert "#SBATCH --dependency=afterok:12_0\n" in video and "#SBATCH --kill-on-invalid-dep=yes\n" in video
    assert "--array" not in video
    assert [read_job(out / "runs" / r)["job_id"] for r in ("image", "other", "video")] == ["12_0", "12_1", "13"]
    # each run's config asks Lightning for the job's shape: 8 devices on each of 2 nodes
    cfg_text = (out / "runs" / "image" / "config.yaml").read_text()
    assert "devices: 8" in cfg_text and "num_nodes: 2" in cfg_text

    _set_states(fake_slurm, {"12_0": "RUNNING", "12_1": "PENDING", "13": "PENDING"})
    rows = grid_status(Grid.load(SLURM_GRID), out)
    assert [(r["status"], r["job"]) for r in rows] == [("running", "12_0"), ("queued", "12_1"), ("queued", "13")]

    # the jobs run (as srun would start them); the grid run again re-attaches and submits nothing new
    jobs_dir = out / "jobs"
    _run_slurm_job(jobs_dir, "12_0")
    _set_states(fake_slurm, {"12_0": "COMPLETED", "12_1": "RUNNING", "13": "PENDING"})
    assert read_status(out / "runs" / "image")["status"] == DONE
    follow: list = []
    thread = threading.Thread(target=lambda: follow.append(run_grid(Grid.load(SLURM_GRID), out, runner=stepping_runner)))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # waiting on 12_1 and 13
    _run_slurm_job(jobs_dir, "12_1")
    _run_slurm_job(jobs_dir, "13")
    _set_states(fake_slurm, {"12_0": "COMPLETED", "12_1": "COMPLETED", "13": "COMPLETED"})
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert [r.status for r in follow[0]] == [DONE, DONE, DONE]
    assert (fake_slurm / "count").read_text().strip() == "14"  # still two sbatch calls
    local = run_grid(Grid.load({**CHAIN, "name": SLURM_GRID["name"]}), tmp_path / "local", runner=stepping_runner)
    assert [r.metrics["uar"] for r in follow[0]] == [r.metrics["uar"] for r in local]


def test_a_slurm_job_that_dies_is_a_failed_run_with_its_reason(tmp_path, fake_slurm):
    out = tmp_path / "g"
    follow: list = []
    thread = threading.Thread(target=lambda: follow.append(run_grid(Grid.load(SLURM_GRID), out, runner=stepping_runner)))
    thread.start()
    deadline = time.time() + 60
    while not (fake_slurm / "sbatch-13.sh").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    _run_slurm_job(out / "jobs", "12_1")
    # image's job dies (no result: killed, out of memory...); SLURM then cancels video, which depends on it
    _set_states(fake_slurm, {"12_0": "FAILED", "12_1": "COMPLETED", "13": "CANCELLED"})
    thread.join(timeout=60)
    assert not thread.is_alive()
    results = follow[0]
    assert [r.status for r in results] == [FAILED, DONE, FAILED]
    assert "its job 12_0 ended (FAILED) without a result" in results[0].error
    assert "init_from run 'image' did not finish" in results[2].error


def test_slurm_shape_conflicts_are_errors_naming_both_numbers():
    raw = {**SLURM_GRID, "runs": [{"id": "a", "overrides": {"train.devices": 4}}]}
    from emofer.grid.launchers import slurm_shape

    cfg = Grid.load(raw).runs[0].config()
    with pytest.raises(ConfigError, match="train.devices=4 .* gpus_per_node=8"):
        slurm_shape(cfg, raw["launcher"])


def gpu_runner(cfg: DictConfig, run_dir: Path) -> dict:
    """Records the GPUs it was given and when it ran."""
    start = time.time()
    time.sleep(0.8)
    gpus = os.environ["CUDA_VISIBLE_DEVICES"]
    (run_dir / "gpus.json").write_text(json.dumps({"gpus": gpus.split(","), "start": start, "end": time.time()}))
    return {"uar": 0.5, "war": 0.5}


def test_local_gpus_packs_runs_onto_free_gpus(tmp_path):
    raw = {
        "name": "pack",
        "base": BASE,
        "launcher": {"name": "local-gpus", "gpus": 4},
        "runs": [{"id": f"r{i}-k{k}", "overrides": {"train.devices": k}} for i, k in enumerate([2, 2, 3, 1])],
    }
    results = run_grid(Grid.load(raw), tmp_path, runner=gpu_runner)
    assert [r.status for r in results] == [DONE] * 4
    seen = {r.id: json.loads((tmp_path / "runs" / r.id / "gpus.json").read_text()) for r in results}
    for run_id, got in seen.items():
        k = int(run_id.split("-k")[1])
        assert len(set(got["gpus"])) == k and set(got["gpus"]) <= {"0", "1", "2", "3"}
    items = list(seen.values())
    for i, a in enumerate(items):  # runs that ran at once held disjoint GPUs
        for b in items[i + 1 :]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert not set(a["gpus"]) & set(b["gpus"])
    submitted = {r.id: read_job(tmp_path / "runs" / r.id)["submitted"] for r in results}
    first_end = min(seen["r0-k2"]["end"], seen["r1-k2"]["end"])
    assert submitted["r1-k2"] < first_end  # the two 2-GPU runs started together on the 4 GPUs ...
    assert submitted["r2-k3"] > first_end and submitted["r3-k1"] > first_end  # ... the others when GPUs freed
    too_big = {**raw, "runs": [{"id": "big", "overrides": {"train.devices": 5}}]}
    failed = run_grid(Grid.load(too_big), tmp_path / "big", runner=gpu_runner)
    assert failed[0].status == FAILED and "4 GPU(s)" in failed[0].error


def test_status_shows_every_run_without_starting_anything(tmp_path, capsys):
    from emofer.cli import main

    grid_file = tmp_path / "g.yaml"
    raw = {**CHAIN, "runs": [*CHAIN["runs"], {"id": "bad", "overrides": {"train.lr": 5.0}}]}
    grid_file.write_text(json.dumps(raw))

    def broken(cfg: DictConfig, run_dir: Path) -> dict:
        if cfg.train.lr > 1:  # a valid config whose run fails (a negative rate is refused at load)
            raise RuntimeError("the loss diverged\nat step 3")
        return stepping_runner(cfg, run_dir)

    out = tmp_path / "out"
    assert main(["grid", str(grid_file), "--out", str(out), "--status"]) == 0
    assert not (out / "runs").exists()  # nothing started
    assert "pending" in capsys.readouterr().out
    run_grid(Grid.load(grid_file), out, runner=broken)
    # 'other' is running as a job of this host; 'video' was running in a process that died
    record_job(out / "runs" / "other", "submitit-local", str(os.getpid()))
    atomic_write_text(out / "runs" / "other" / "status.json", json.dumps({"status": "running"}))
    record_job(out / "runs" / "video", "local", "999999999")
    atomic_write_text(out / "runs" / "video" / "status.json", json.dumps({"status": "running"}))
    capsys.readouterr()
    assert main(["grid", str(grid_file), "--out", str(out), "--status"]) == 1
    text = capsys.readouterr().out
    rows = {r["run"]: r for r in grid_status(Grid.load(grid_file), out)}
    assert rows["image"]["status"] == DONE and rows["image"]["detail"].startswith("uar ")
    assert (rows["other"]["status"], rows["other"]["job"]) == ("running", str(os.getpid()))
    assert rows["video"]["status"] == "interrupted"
    assert rows["bad"]["status"] == FAILED and rows["bad"]["detail"] == "at step 3"  # the error's last line
    for word in ("done", "running", "interrupted", "failed", "at step 3", str(os.getpid())):
        assert word in text


def test_unknown_launchers_and_keys_are_errors():
    with pytest.raises(ConfigError, match="unknown launcher 'pbs'"):
        Grid.load({**CHAIN, "launcher": "pbs"})
    with pytest.raises(ConfigError, match="does not take \\['partition'\\]"):
        Grid.load({**CHAIN, "launcher": {"name": "local", "partition": "gpu"}})
    assert Grid.load({**CHAIN, "launcher": "slurm"}).launcher == {"name": "slurm"}


LIGHTNING_GRID = """
name: preempt
base: classifier-tiny
launcher: submitit-local
overrides:
  data.train: [{name: synthfer, split: train, size: 64}]
  data.test: [{name: synthfer, split: test, size: 14}]
  data.batch_size: 16
  data.eval_batch_size: 16
  train.max_steps: 30
  train.checkpoint_every: 2
runs:
  - {id: a}
"""


def test_a_preempted_lightning_run_resumes_from_its_last_checkpoint(tmp_path):
    """The real runner: submitit's preemption signal, a requeue, and Lightning restoring ``last.ckpt``."""
    import torch

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(LIGHTNING_GRID)
    out = tmp_path / "out"
    done: list = []
    thread = threading.Thread(target=lambda: done.append(run_grid(Grid.load(grid_file), out)))
    thread.start()
    run_dir, last = out / "runs" / "a", out / "runs" / "a" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    controller = int(read_job(run_dir)["job_id"])
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)
    thread.join(timeout=600)
    assert not thread.is_alive() and done[0][0].status == DONE, done[0][0].error
    status = read_status(run_dir)
    assert status["attempts"] == 2
    job = read_job(run_dir)
    logs = "".join(p.read_text() for p in Path(job["folder"]).glob("*_log.*"))
    assert "this job is preempted" in logs and "Restoring states from the checkpoint" in logs
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 30
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 30


def test_the_shipped_cluster_grid_asks_slurm_for_two_nodes_of_eight_gpus():
    from emofer.config import PRESET_DIR
    from emofer.grid.launchers import slurm_parameters, slurm_shape

    grid = Grid.load(PRESET_DIR / "grids" / "emo-llama-7b-slurm.yaml")
    params = slurm_parameters(grid.launcher, grid.name)
    assert params == {
        "job_name": "emo-llama-7b-ablation", "nodes": 2, "ntasks_per_node": 8, "gpus_per_node": 8, "time": 1440,
        "partition": "gpu", "cpus_per_task": 10, "mem": "480GB", "additional_parameters": {"exclusive": True},
        "setup": ["export NCCL_ASYNC_ERROR_HANDLING=1"],
    }
    assert len(grid.runs) == 12 and {r.init_from for r in grid.runs if r.id.startswith("fim-video")} == {
        "fim+seed=0", "fim+seed=1", "fim+seed=2"}
    cfg = slurm_shape(grid.runs[0].config(), grid.launcher)
    assert (cfg.train.devices, cfg.train.num_nodes, cfg.train.strategy) == (8, 2, "ddp")


def test_a_grid_whose_controller_died_follows_its_running_jobs(tmp_path):
    """SIGKILL of the grid process: its submitit-local jobs go on; the grid run again follows them."""
    import subprocess

    raw = {**CHAIN, "overrides": {"train.max_steps": 8}}
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(json.dumps(raw))
    out = tmp_path / "out"
    script = (
        f"import sys; sys.path[:0] = {[str(Path(__file__).parent)]!r}\n"
        "from test_grid_launchers import stepping_runner\n"
        "from emofer.grid import Grid, run_grid\n"
        f"run_grid(Grid.load({str(grid_file)!r}), {str(out)!r}, runner=stepping_runner, launcher='submitit-local')\n"
    )
    controller = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    job_pid = _task_pid(out / "runs" / "image", min_step=2, timeout=120)
    controller.kill()
    controller.wait()
    job = read_job(out / "runs" / "image")
    assert read_status(out / "runs" / "image")["status"] == "running"
    results = run_grid(Grid.load(grid_file), out, runner=stepping_runner, launcher="submitit-local")
    assert [r.status for r in results] == [DONE, DONE, DONE]
    starts = (out / "runs" / "image" / "starts.jsonl").read_text().splitlines()
    assert [json.loads(s)["pid"] for s in starts] == [job_pid]  # followed to its end, not started again
    assert read_job(out / "runs" / "image")["job_id"] == job["job_id"]
    straight = run_grid(Grid.load(raw), tmp_path / "straight", runner=stepping_runner)
    assert [r.metrics for r in results] == [r.metrics for r in straight]
