"""emofer import, save_pretrained without copying the checkpoint, re-reading it, and starting a run from it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import emofer
from emofer.checkpoints import CheckpointError
from emofer.cli import main
from emofer.model import EmoFERModel
from tests.llava_checkpoints import NUM_PATCHES, reference_logits, write_llava_hf
from tests.test_checkpoints_llava import ANSWER, QUESTION, _image


def _logits(model, seed=0):
    pixels = model.encoder.transform()(_image(seed))
    return model.answer_logits({"pixels": pixels[None, None]}, QUESTION, ANSWER)


def test_import_command_writes_a_folder_that_rereads_the_checkpoint(tmp_path, capsys):
    reference = write_llava_hf(tmp_path / "llava")
    assert main(["import", str(tmp_path / "llava"), "--out", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "llava-hf" in out and "kept at initialisation: nothing" in out
    record = json.loads((tmp_path / "model" / "checkpoint.json").read_text())
    assert record["format"] == "llava-hf" and record["files"][0]["size"] > 0
    # only what differs from the checkpoint is written: here nothing but the config
    written = (tmp_path / "model" / "model.safetensors").stat().st_size
    assert written < 0.01 * (tmp_path / "llava" / "model.safetensors").stat().st_size
    model = EmoFERModel.from_pretrained(tmp_path / "model")
    pixels = model.encoder.transform()(_image())
    theirs = reference_logits(reference, model.llm, pixels[None], QUESTION, ANSWER, NUM_PATCHES)
    assert (model.answer_logits({"pixels": pixels[None, None]}, QUESTION, ANSWER) - theirs).abs().max() <= 1e-4
    preds = model.classify(_image(3), mode="score")
    assert preds[0].label in model.classes
    assert model.classify(_image(3), mode="generate", max_new_tokens=3)[0].text is not None


def test_a_moved_or_changed_checkpoint_fails_clearly(tmp_path):
    write_llava_hf(tmp_path / "llava")
    emofer.from_checkpoint(tmp_path / "llava").save_pretrained(tmp_path / "model")
    shutil.move(tmp_path / "llava", tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=r"re-reads its base weights .* is gone \(moved or deleted\)"):
        EmoFERModel.from_pretrained(tmp_path / "model")
    shutil.move(tmp_path / "elsewhere", tmp_path / "llava")
    write_llava_hf(tmp_path / "llava", seed=1, strategy="full")  # same names, other bytes
    with pytest.raises(CheckpointError, match=r"changed since the import"):
        EmoFERModel.from_pretrained(tmp_path / "model")


def test_trained_parts_are_written_and_copy_all_copies_everything(tmp_path):
    write_llava_hf(tmp_path / "llava")
    model = emofer.from_checkpoint(tmp_path / "llava")
    with torch.no_grad():
        model.fusion.proj[0].weight.add_(0.5)  # "trained"
    model.save_pretrained(tmp_path / "model")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"fusion.proj.0.weight"}
    again = EmoFERModel.from_pretrained(tmp_path / "model")
    assert torch.equal(again.fusion.proj[0].weight, model.fusion.proj[0].weight)
    assert torch.equal(_logits(again), _logits(model))
    model.save_pretrained(tmp_path / "full", include_pretrained=True)
    assert not (tmp_path / "full" / "checkpoint.json").exists()
    (tmp_path / "llava" / "model.safetensors").unlink()  # the weights go; the tokenizer is read from there
    with pytest.raises(CheckpointError, match="is gone"):
        EmoFERModel.from_pretrained(tmp_path / "model")
    assert torch.equal(_logits(EmoFERModel.from_pretrained(tmp_path / "full")), _logits(model))


def test_import_into_a_preset_keeps_the_face_branch_and_a_run_starts_from_it(tmp_path, capsys):
    write_llava_hf(tmp_path / "llava")
    args = ["import", str(tmp_path / "llava"), "-c", "emo-llama-tiny", "--out", str(tmp_path / "model")]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    kept = json.loads((tmp_path / "model" / "checkpoint.json").read_text())["kept"]
    assert "kept at initialisation: " + ", ".join(kept) in out
    assert "fusion.aggregator" in kept  # Face Info Mining's face branch
    assert not [p for p in kept if p.startswith(("encoder", "llm", "fusion.visual"))]
    cfg = emofer.load_config(tmp_path / "model" / "config.yaml")
    assert cfg.model.fusion.visual.name == "mlp2x-gelu" and cfg.model.face_prior.name != "none"
    # a run built from the imported config starts from the folder and reports the face branch as kept
    model = emofer.build_model(cfg)
    reported = model.load_weights(tmp_path / "model", missing="keep")
    assert reported == kept
    imported = emofer.from_checkpoint(tmp_path / "llava", cfg="emo-llama-tiny")
    assert torch.equal(model.llm.lm.lm_head.weight, imported.llm.lm.lm_head.weight)


def test_import_into_emo_llama_7b_on_the_meta_device(tmp_path):
    """The 7B preset's structure around a (tiny) LLaVA: the checkpoint's parts filled, the rest reported."""
    write_llava_hf(tmp_path / "llava")
    with torch.device("meta"):
        model = emofer.from_checkpoint(tmp_path / "llava", cfg="emo-llama-7b")
    assert model.cfg.face_prior.name == "facexformer" and model.cfg.fusion.visual.name == "mlp2x-gelu"
    assert model.cfg.llm.lora.r == 64 and model.cfg.llm.dtype == "bfloat16"  # the preset's training settings
    kept = model.import_report.kept
    assert "face_prior" in kept and "fusion.aggregator" in kept
    filled = {k: v for k, v in model.state_dict().items() if k in model.import_report.state}
    assert filled and not any(v.is_meta for v in filled.values())
    assert all(model.state_dict()[k].is_meta for k in model.state_dict() if k.startswith("fusion.aggregator."))
    lora = [k for k in model.state_dict() if "lora_" in k]
    assert lora and set(lora) == set(model.import_report.adapters)


def test_an_imported_llava_is_a_zero_shot_row_of_a_grid(tmp_path):
    """Both read-outs of an untrained import, as grid rows (train.max_steps 0 + init_from)."""
    from emofer.grid import DONE, Grid, run_grid

    write_llava_hf(tmp_path / "llava")
    emofer.from_checkpoint(tmp_path / "llava").save_pretrained(tmp_path / "model")
    grid = Grid.load(
        {
            "name": "zero-shot",
            "base": str(tmp_path / "model" / "config.yaml"),
            "overrides": {
                "train.max_steps": 0,
                "train.init_from": str(tmp_path / "model"),
                "data.test": [{"name": "synthfer", "split": "test", "size": 14}],
                "eval.max_new_tokens": 3,
            },
            "grid": {"eval.mode": ["score", "generate"]},
        }
    )
    results = run_grid(grid, tmp_path / "out")
    assert [r.status for r in results] == [DONE, DONE]
    for mode in ("score", "generate"):
        run = tmp_path / "out" / "runs" / mode
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["eval_mode"] == mode and metrics["num_samples"] == 14 and metrics["steps"] == 0
        assert (run / "model" / "checkpoint.json").is_file()  # the run's model re-reads the checkpoint too
        assert (run / "model" / "model.safetensors").stat().st_size < 10_000
    score = json.loads((tmp_path / "out" / "runs" / "score" / "metrics.json").read_text())
    assert score["invalid_rate"] == 0.0  # scoring cannot answer off the list; generate may (random weights)
