"""Stage 0 of the quickstart: SynthFER-Describe, the cached base MLLM, and variants started from it."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

import emofer
from emofer.base_model import base_config, check_no_expression_task, pretrain_base_model
from emofer.data import DATASETS
from emofer.data.datasets.synthfer import SynthFER, class_counts
from emofer.data.datasets.synthfer_describe import ANSWERS, TASKS, SynthFERDescribe, answers
from emofer.data.instructions import ADJECTIVES, CUES
from emofer.grid import Grid, run_grid
from emofer.labels import CANONICAL

EXPRESSION_WORDS = set(CANONICAL) | set(ADJECTIVES.values()) | {"expression", "emotion", "feel", "smile"}


def test_stage0_data_asks_every_task_and_never_the_expression():
    ds = SynthFERDescribe("train", size=40)
    assert len(ds) == 40 * len(TASKS)
    faces = SynthFER("train", size=40)
    seen = Counter()
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"id", "media_id", "image", "question", "answer", "label", "classes", "task"}  # no expression label
        text = f"{s['question']} {s['answer']}".lower().replace(",", " ").replace("?", " ").replace(".", " ")
        assert not EXPRESSION_WORDS & set(text.split()), s["question"]
        assert not any(cue.lower() in text for cue in CUES.values())
        assert s["classes"][s["label"]] == s["answer"] and s["answer"] in TASKS[s["task"]][1]
        face = faces[i // len(TASKS)]
        assert s["answer"] == answers(face)[s["task"]]
        assert list(s["image"].getdata()) == list(face["image"].getdata())
        seen[s["task"]] += 1
    assert seen == {t: 40 for t in TASKS}
    assert not set(ANSWERS) & set(CANONICAL)
    one = SynthFERDescribe("val", size=3, tasks=["gender"])
    assert one.classes == ("man", "woman") and len(one) == 3 and one.name == "synthfer-describe-val-gender"
    with pytest.raises(ValueError, match="tasks must be among"):
        SynthFERDescribe("val", tasks=["expression"])


def test_head_turn_and_tilt_answers_follow_the_landmarks():
    ds = SynthFER("train", size=120)
    for i in range(len(ds)):
        s = ds[i]
        truth = answers(s)
        lm = s["landmarks"]
        face_centre_x = (lm[0, 0] + lm[16, 0]) / 2  # jaw ends
        nose_x = lm[30, 0]
        eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)  # image-left and image-right eye
        tilt = math.atan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0])
        if truth["yaw"] != "front":
            assert (nose_x > face_centre_x) == (truth["yaw"] == "right")
        if truth["roll"] != "upright":
            assert (tilt > 0) == (truth["roll"] == "clockwise")  # image y points down


def test_stage0_refuses_expression_data():
    check_no_expression_task(base_config())
    cfg = base_config(overrides={"data": {"train": [{"name": "synthfer", "split": "train"}]}})
    with pytest.raises(ValueError, match="'synthfer', whose answers are"):
        check_no_expression_task(cfg)


TINY_STAGE0 = {
    "train": {"max_steps": 2, "checkpoint_every": 1000},
    "data": {
        "batch_size": 4,
        "eval_batch_size": 8,
        "train": [{"name": "synthfer-describe", "split": "train", "size": 4}],
        "test": [{"name": "synthfer-describe", "split": "val", "size": 2, "tasks": [t]} for t in TASKS],
    },
}


def test_stage0_is_cached_by_recipe(tmp_path, monkeypatch):
    import emofer.experiment

    model = pretrain_base_model(overrides=TINY_STAGE0, cache_dir=tmp_path)
    assert model.parent.parent == tmp_path / "base-models" and (model / "model.safetensors").exists()
    meta = json.loads((model.parent / "meta.json").read_text())
    assert set(meta["held_out"]) == {f"synthfer-describe-val-{t}" for t in TASKS}
    assert meta["recipe"]["train"]["max_steps"] == 2 and not (model.parent / "checkpoints").exists()
    stamp = (model / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a cached base model was trained again")

    monkeypatch.setattr(emofer.experiment, "train", no_training)
    assert pretrain_base_model(overrides=TINY_STAGE0, cache_dir=tmp_path) == model
    assert (model / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    changed = {**TINY_STAGE0, "train": {"max_steps": 3, "checkpoint_every": 1000}}
    other = pretrain_base_model(overrides=changed, cache_dir=tmp_path)
    assert other != model and (other / "model.safetensors").exists()
    assert json.loads((other.parent / "meta.json").read_text())["recipe"]["train"]["max_steps"] == 3


def test_emo_llama_starts_from_the_base_with_its_face_branch_kept(tmp_path):
    base = emofer.build_model(base_config())
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    full = emofer.build_model(emofer.load_config("emo-llama-tiny"))
    face_before = full.fusion.aggregator.queries.detach().clone()
    kept = full.load_weights(tmp_path / "base", missing="keep")
    assert kept == ["face_prior", "fusion.aggregator", "fusion.coord_proj", "fusion.global_proj",
                    "fusion.global_type", "fusion.local_index", "fusion.local_proj", "fusion.out_proj"]
    assert torch.equal(full.fusion.aggregator.queries, face_before)
    loaded = full.state_dict()
    for key, value in base.state_dict().items():  # LLaMA-VID's fusion lands in Face Info Mining's visual branch
        assert torch.equal(value, loaded[key.replace("fusion.", "fusion.visual.", 1)])
    no_fim = emofer.build_model(emofer.load_config("emo-llama-tiny-no-fim"))
    assert no_fim.load_weights(tmp_path / "base", missing="keep") == ["face_prior"]


def test_a_grid_starts_runs_from_its_stage0_model(tmp_path):
    raw = {
        "base": "emo-llama-tiny-no-agr",
        "pretrain": {"base_model": {"overrides": TINY_STAGE0, "cache_dir": str(tmp_path / "cache")}},
        "runs": [{"id": "tuned", "init_from": "base-model"}, {"id": "scratch"}],
    }
    seen: dict[str, tuple] = {}

    def runner(cfg: DictConfig, run_dir: Path) -> dict:
        seen[cfg.name] = (cfg.train.init_from, cfg.train.init_missing)
        return {"uar": 0.5, "war": 0.5, "macro_f1": 0.5, "invalid_rate": 0.0}

    run_grid(Grid.load(raw), tmp_path / "g", runner=runner)
    path, missing = seen["tuned"]
    assert Path(path).is_relative_to(tmp_path / "cache" / "base-models") and missing == "keep"
    assert seen["scratch"] == (None, "error")
    with pytest.raises(emofer.config.ConfigError, match="needs a 'pretrain: base_model:' stage"):
        Grid.load({**raw, "pretrain": {}})


def test_a_synthfer_split_can_follow_rafdb_class_frequencies():
    assert class_counts("rafdb", 3068, ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")) == [
        329, 74, 160, 1185, 478, 162, 680,
    ]
    test = SynthFER("test", class_distribution="rafdb")
    counts = Counter(test.classes[label] for label in test.labels())
    assert len(test) == 1400 and sum(counts.values()) == 1400
    assert counts["happiness"] == 541 and counts["fear"] == 34
    assert test.labels() == SynthFER("test", class_distribution="rafdb").labels()  # fixed
    assert test[5]["label"] == test.labels()[5]
    assert SynthFER("test", size=14).labels() == [i % 7 for i in range(14)]  # balanced by default
    built = DATASETS.build({"name": "synthfer", "split": "test", "class_distribution": {"happiness": 1, "fear": 1}})
    assert set(built.labels()) == {1, 4}
    with pytest.raises(ValueError, match="unknown class_distribution 'affectnet'"):
        SynthFER("test", class_distribution="affectnet")
