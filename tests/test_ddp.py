"""Scale-out is Lightning's: DDP on two CPU processes (gloo) gives the metrics of one process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emofer.cli import main

DATA = [
    "data.train=[{name: synthfer, split: train, size: 160}]",
    "data.test=[{name: synthfer, split: test, size: 29}]",  # odd: the two processes get 15 and 14
    "data.batch_size=16",
    "data.eval_batch_size=8",
]


def _predictions(folder) -> dict[str, dict]:
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


@pytest.mark.timeout(600)
def test_ddp_metrics_equal_a_single_process_evaluation(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "emofer.cli", "train", "-c", "emo-llama-tiny", *DATA]
    cmd += ["train.max_steps=4", "train.lr=1e-3", "model.freeze=[face_prior]"]
    cmd += [
        "train.strategy=ddp",
        "train.devices=2",
        "train.accelerator=cpu",
        "--out",
        str(run),
        "--no-progress",
    ]
    log = tmp_path / "ddp.log"
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=500)
    assert done.returncode == 0, log.read_text()[-4000:]
    ddp = json.loads((run / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["num_samples"] == 29

    single_dir = tmp_path / "single"
    one_process = ["train.strategy=auto", "train.devices=1"]  # the run's config asks for two
    assert (
        main(["eval", "--ckpt", str(run / "model"), *one_process, "--out", str(single_dir), "--no-progress"])
        == 0
    )
    single = json.loads((single_dir / "metrics.json").read_text())
    assert single["world_size"] == 1
    for key in ("confusion", "num_samples", "recall", "invalid_rate"):
        assert ddp[key] == single[key], key
    for key in ("uar", "war", "macro_f1"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-12), key

    a, b = _predictions(run), _predictions(single_dir)
    assert sorted(a) == sorted(b) and len(a) == 29
    for sid, rec in a.items():
        assert rec["pred"] == b[sid]["pred"]
        assert rec["scores"] == pytest.approx(b[sid]["scores"], abs=1e-4)
    # the scores depend on the input, so a record filed under the wrong id would show
    assert len({tuple(round(v, 3) for v in r["scores"].values()) for r in a.values()}) > 20


@pytest.mark.parametrize(
    ("overrides", "env", "launches"),
    [
        ([], {}, False),
        (["train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"], {}, True),
        (["train.strategy=ddp", "train.devices=1", "train.accelerator=cpu"], {}, False),
        (["train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"], {"LOCAL_RANK": "0"}, False),  # torchrun
        (
            ["train.strategy=ddp", "train.devices=2", "train.accelerator=cpu"],
            {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "n1"},
            False,
        ),
    ],
)
def test_who_launches_the_processes_is_lightnings_call(overrides, env, launches, monkeypatch):
    from emofer.config import load_config
    from emofer.experiment import launches_processes

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launches_processes(load_config("emo-llama-tiny", overrides)) is launches
