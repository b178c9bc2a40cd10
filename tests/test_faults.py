"""Faults (issue 20): a kill at any point of an export, corrupt checkpoints at resume, bad test samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import emofer
import emofer.model
import emofer.safe_io as safe_io
from emofer.checkpoint_io import AtomicCheckpointIO, resume_checkpoint
from emofer.model import EmoFERModel
from emofer.safe_io import UnsafeFileError


class Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` or cleanup in the save path may catch it."""


def _model(seed: int, classes: list[str]) -> EmoFERModel:
    torch.manual_seed(seed)
    return emofer.build_model(emofer.load_config("classifier-tiny", [f"model.classes=[{','.join(classes)}]"]))


CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
OLD, NEW = _model(0, CLASSES), _model(1, CLASSES[::-1])  # a mix would put every score on a wrong label
PIXELS = torch.rand(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _scores(model: EmoFERModel) -> dict[str, list[float]]:
    model.eval()
    with torch.no_grad():
        scores = model.score_batch({"pixels": PIXELS, "classes": model.classes, "questions": ["?"] * 2})
    return {c: scores[:, i].tolist() for i, c in enumerate(model.classes)}


def _kill_at(monkeypatch, k: int | None) -> list[str]:
    """Makes the k-th write point of a save raise :class:`Killed`; returns the points passed."""
    passed: list[str] = []

    def point(step: str) -> None:
        if k is not None and len(passed) == k:
            raise Killed(step)
        passed.append(step)

    monkeypatch.setattr(safe_io, "fault_point", point)
    monkeypatch.setattr(emofer.model, "fault_point", point)
    return passed


@pytest.mark.parametrize("exchange", [True, False], ids=["one-exchange", "two-renames"])
@pytest.mark.parametrize("existing", [True, False], ids=["over-an-old-folder", "first-export"])
def test_a_kill_at_any_point_of_an_export_leaves_the_old_or_the_new_model(tmp_path, monkeypatch, exchange, existing):
    if not exchange:
        monkeypatch.setattr(safe_io, "_exchange", lambda a, b: False)
    want_old, want_new = _scores(OLD), _scores(NEW)
    if existing:
        OLD.save_pretrained(tmp_path / "probe")
    points = _kill_at(monkeypatch, None)
    NEW.save_pretrained(tmp_path / "probe")  # counts the write points of this kind of save
    assert len(points) >= 5, points  # mkdir, config, weights, write, manifest, swap...
    seen = set()
    for k in range(len(points) + 1):
        folder = tmp_path / f"k{k}" / "model"
        if existing:
            _kill_at(monkeypatch, None)
            OLD.save_pretrained(folder)
        _kill_at(monkeypatch, k)
        if k < len(points):
            with pytest.raises(Killed):
                NEW.save_pretrained(folder)
        else:
            NEW.save_pretrained(folder)
        _kill_at(monkeypatch, None)
        try:
            model = EmoFERModel.from_pretrained(folder)  # finishes or undoes an interrupted swap first
        except FileNotFoundError:
            assert not existing, f"killed after {points[:k]}: the old model is gone"
            seen.add("none")  # a first export killed before its folder was complete: no model yet
            assert not list(folder.parent.glob(".model.*")), "debris left after a load"
            continue
        loaded = _scores(model)
        assert loaded in (want_old, want_new), f"killed after {points[:k]}: a mix of two models"
        seen.add("old" if loaded == want_old else "new")
        assert not list(folder.parent.glob(".model.*")), "debris left after a load"
    assert seen == ({"old", "new"} if existing else {"none", "new"})


def test_a_save_refuses_to_delete_files_it_did_not_write(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UnsafeFileError, match=r"model holds files a save would delete \(notes.txt\)"):
        OLD.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_changed_weights_file_is_named_by_the_manifest(tmp_path):
    OLD.save_pretrained(tmp_path / "m")
    NEW.save_pretrained(tmp_path / "n")
    (tmp_path / "m" / "model.safetensors").write_bytes((tmp_path / "n" / "model.safetensors").read_bytes())
    with pytest.raises(UnsafeFileError, match=r"m/model.safetensors differs from .*manifest.json"):
        EmoFERModel.from_pretrained(tmp_path / "m")


# -- checkpoints ----------------------------------------------------------------------------------


def test_checkpoints_are_atomic_and_resume_falls_back_to_the_previous_one(tmp_path, caplog):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.ones(2)}}, last)
    io.save_checkpoint({"global_step": 6, "state_dict": {"w": torch.ones(2)}}, last)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.ckpt.prev"]
    assert resume_checkpoint(last) == last
    (last.parent / ".last.ckpt.123.tmp").write_bytes(b"half")  # debris of a killed write
    last.write_bytes(last.read_bytes()[:100])  # truncated (a full disk)
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(last) == last.with_name("last.ckpt.prev")
    assert f"{last} is not a readable checkpoint" in caplog.text
    assert not (last.parent / ".last.ckpt.123.tmp").exists()
    assert torch.load(resume_checkpoint(last), weights_only=True)["global_step"] == 3
    last.with_name("last.ckpt.prev").write_bytes(b"")
    with pytest.raises(UnsafeFileError, match=rf"{last} is not a readable checkpoint.*last.ckpt.prev is empty"):
        resume_checkpoint(last)


def test_a_full_disk_during_a_checkpoint_write_leaves_the_last_one_whole(tmp_path, monkeypatch):
    import errno

    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 3}, last)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 6}, last)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(last, weights_only=True)["global_step"] == 3  # untouched
    assert resume_checkpoint(last) == last and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_resume_from_a_pickle_checkpoint_is_refused_without_unpickling(tmp_path, capsys):
    from emofer.cli import main

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 1, "evil": Path("x")}, out / "checkpoints" / "last.ckpt")
    tiny = ["data.train=[{name: synthfer, split: train, size: 16}]", "data.test=[{name: synthfer, split: test, size: 7}]"]
    assert main(["train", "-c", "classifier-tiny", *tiny, "--out", str(out), "--resume", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "last.ckpt is not a safe checkpoint" in err and "weights_only" not in err


# -- evaluation with on_bad_sample: skip ------------------------------------------------------------


def test_skipped_test_samples_are_excluded_and_counted_exactly(tmp_path):
    from emofer.experiment import evaluate

    root = tmp_path / "raf"
    (root / "EmoLabel").mkdir(parents=True)
    lines = [f"test_{i:04d}.jpg {1 + i % 7}" for i in range(1, 11)]
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    images = root / "Image" / "aligned"
    images.mkdir(parents=True)
    for i in range(1, 11):
        if i not in (3, 4):  # two missing files, next to each other (the next one is bad too)
            Image.new("RGB", (16, 16), (20 * i, 0, 0)).save(images / f"test_{i:04d}_aligned.jpg")
    OLD.save_pretrained(tmp_path / "model")
    cfg = emofer.load_config("classifier-tiny", [
        f"data.test=[{{name: rafdb, root: '{root}', split: test}}]", "data.on_bad_sample=skip",
        "data.eval_batch_size=4", f"model.classes=[{','.join(CLASSES)}]",
    ])
    metrics = evaluate(cfg, tmp_path / "model", tmp_path / "eval", progress=False)
    ids = [json.loads(line)["id"] for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert metrics["num_samples"] == 8 and metrics["skipped_samples"] == 2
    assert sorted(ids) == [f"test_{i:04d}" for i in range(1, 11) if i not in (3, 4)]  # each once, none repeated


# -- exact resume ---------------------------------------------------------------------------------

RUN = [
    "data.train=[{name: synthfer, split: train, size: 96}]",  # 6 batches an epoch: 2 epochs
    "data.test=[{name: synthfer, split: test, size: 28}]",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "train.max_steps=12",
]


@pytest.mark.parametrize("every, killed_at", [(4, 7), (6, 9)], ids=["mid-epoch", "at-an-epoch-end"])
def test_a_killed_and_resumed_run_replays_the_uninterrupted_one_exactly(tmp_path, monkeypatch, every, killed_at):
    from emofer.experiment import train
    from emofer.system import EmoFERSystem

    # dropout and the encoder's random flips: the RNG must be replayed, not only the batch order
    cfg = emofer.load_config("classifier-tiny", [*RUN, f"train.checkpoint_every={every}", "model.llm.dropout=0.3"])
    whole = train(cfg, tmp_path / "whole", progress=False)

    step = EmoFERSystem.training_step

    def dies(self, batch, batch_idx):
        if self.global_step == killed_at:
            raise Killed(f"step {killed_at}")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(EmoFERSystem, "training_step", dies)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(EmoFERSystem, "training_step", step)
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == killed_at // every * every and not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    for key in ("uar", "war", "macro_f1", "confusion", "num_samples", "steps"):
        assert resumed[key] == whole[key], key
    assert (tmp_path / "resumed" / "predictions.jsonl").read_text() == (tmp_path / "whole" / "predictions.jsonl").read_text()
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed weights differ"


def test_a_resumed_sampler_continues_the_same_sequence_and_samples_draw_by_place():
    from emofer.data.sampler import BatchView, GroupedBatchSampler

    sampler = GroupedBatchSampler([0] * 20 + [1] * 12, batch_size=4, seed=3)
    sampler.set_epoch(2)
    whole = [list(b) for b in sampler]
    sampler.set_epoch(2)
    sampler.skip_to(2, 3)
    assert [list(b) for b in sampler] == whole[3:]
    sampler.set_epoch(3)  # the skip belongs to its epoch only
    assert len(list(sampler)) == len(whole)

    class Noisy(torch.utils.data.Dataset):  # stands for random augmentation: draws from torch's RNG
        def __len__(self):
            return 32

        def __getitem__(self, i):
            return float(torch.rand(()))

    sampler.set_epoch(5)
    batch = next(iter(sampler))
    view = BatchView(Noisy())
    torch.manual_seed(0)
    first = view[batch]
    after = torch.rand(())
    torch.manual_seed(123)  # another worker, another history: the same draws
    assert view[batch] == first and len(set(first)) == len(first)
    torch.manual_seed(0)
    assert torch.rand(()) == after  # the caller's RNG is forked, not consumed


def test_a_run_folder_whose_export_was_killed_between_two_renames_loads(tmp_path):
    from emofer.experiment import load_trained

    OLD.save_pretrained(tmp_path / "run" / ".model.old-1234abcd")  # what the first rename left, no model/
    assert _scores(load_trained(tmp_path / "run")) == _scores(OLD)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model"]
