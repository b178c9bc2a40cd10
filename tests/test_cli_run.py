"""The run commands end to end: ``emofer train``, ``eval``, ``predict``, ``--resume`` after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emofer.cli import main

TINY = [
    "data.train=[{name: synthfer, split: train, size: 96}]",
    "data.test=[{name: synthfer, split: test, size: 28}]",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "train.max_steps=6",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "-c", "classifier-tiny", *TINY, "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_the_run_folder(trained, capsys):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["num_samples"] == 28 and metrics["eval_mode"] == "classifier"
    assert 0.0 <= metrics["uar"] <= 1.0 and metrics["invalid_rate"] == 0.0
    lines = (trained / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 28
    first = json.loads(lines[0])
    assert set(first) == {"dataset", "id", "true", "pred", "scores", "text"}
    assert set(first["scores"]) == set(metrics["recall"])
    assert (trained / "model" / "model.safetensors").exists() and (
        trained / "checkpoints" / "last.ckpt"
    ).exists()
    assert "max_steps: 6" in (trained / "config.yaml").read_text()


def test_eval_reproduces_the_training_runs_test_metrics(trained, capsys):
    out = trained.parent / "eval"
    assert main(["eval", "--ckpt", str(trained / "model"), "--out", str(out), "--no-progress"]) == 0
    shown = capsys.readouterr().out
    before = json.loads((trained / "metrics.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    for key in ("uar", "war", "macro_f1", "invalid_rate", "confusion"):
        assert after[key] == before[key]
    assert (out / "predictions.jsonl").read_text() == (trained / "predictions.jsonl").read_text()
    assert "UAR" in shown and f"{before['uar']:.4f}" in shown


def test_eval_from_a_lightning_checkpoint(trained):
    out = trained.parent / "eval-ckpt"
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(ckpt),
                "-c",
                str(trained / "config.yaml"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 28


def _write_inputs(folder: Path) -> tuple[Path, Path]:
    import av
    import numpy as np

    from emofer.data.datasets.synthfer import SynthFER

    image = folder / "face.png"
    SynthFER("test", size=4)[3]["image"].save(image)
    video = folder / "clip.mp4"
    frames = SynthFER("test", size=2, num_frames=6)[1]["frames"]
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=6)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for frame in frames:
            packet = stream.encode(
                av.VideoFrame.from_ndarray(np.asarray(frame.convert("RGB")), format="rgb24")
            )
            container.mux(packet)
        container.mux(stream.encode())
    return image, video


def test_predict_on_an_image_and_a_video(trained, tmp_path, capsys):
    image, video = _write_inputs(tmp_path)
    assert main(["predict", str(image), str(video), "--model", str(trained), "--json", "--frames", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["path"] for r in rows] == [str(image), str(video)]
    classes = json.loads((trained / "metrics.json").read_text())["recall"].keys()
    for row in rows:
        assert row["label"] in classes
        assert set(row["scores"]) == set(classes)
        assert row["label"] == max(row["scores"], key=row["scores"].get)
    assert main(["predict", str(image), "--model", str(trained / "model")]) == 0
    assert "predictions (classifier)" in capsys.readouterr().out


def test_predict_names_missing_files(trained, capsys):
    assert main(["predict", "no-such.png", "--model", str(trained)]) == 2
    assert "no-such.png" in capsys.readouterr().err


def test_train_init_from_starts_from_another_runs_model(trained, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "finetuned"
    args = ["train", "-c", "classifier-tiny", *TINY[:-1], "train.max_steps=2", "train.lr=0.0"]
    assert main([*args, f"train.init_from={trained}", "--out", str(out), "--no-progress"]) == 0
    source = load_file(trained / "model" / "model.safetensors")
    started = load_file(out / "model" / "model.safetensors")
    weights = [k for k in source if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(weights) > 10 and all(torch.equal(source[k], started[k]) for k in weights)  # lr 0: as loaded
    scratch = tmp_path / "scratch"
    assert main([*args, "--out", str(scratch), "--no-progress"]) == 0
    fresh = load_file(scratch / "model" / "model.safetensors")
    assert not all(torch.equal(source[k], fresh[k]) for k in weights)


def test_resume_continues_a_killed_training_run(tmp_path):
    out = tmp_path / "run"
    overrides = [*TINY[:-1], "train.max_steps=30", "train.checkpoint_every=3"]
    cmd = [sys.executable, "-m", "emofer.cli", "train", "-c", "classifier-tiny", *overrides]
    cmd += ["--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()

    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < 30
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Restoring states from the checkpoint" in done.stdout + done.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == 30
