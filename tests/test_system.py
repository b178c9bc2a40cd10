"""Metrics, the feature cache and the Lightning system."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from emofer.metrics import INVALID, expression_metrics, summarize

CLASSES = ["neutral", "happiness", "sadness", "surprise"]


def _random_preds(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g)


def test_metrics_match_torchmetrics_without_invalid_answers():
    preds, target = _random_preds(300, 4, seed=1)
    metrics = expression_metrics(4)
    metrics.update(preds[:100], target[:100])
    metrics.update(preds[100:], target[100:])
    v = summarize(metrics.compute(), CLASSES)
    assert v["war"] == pytest.approx(float(MulticlassAccuracy(4, average="micro")(preds, target)), abs=1e-6)
    assert v["uar"] == pytest.approx(float(MulticlassRecall(4, average="macro")(preds, target)), abs=1e-6)
    assert v["macro_f1"] == pytest.approx(
        float(MulticlassF1Score(4, average="macro")(preds, target)), abs=1e-6
    )
    per_class = MulticlassRecall(4, average="none")(preds, target).tolist()
    assert list(v["recall"].values()) == pytest.approx(per_class, abs=1e-6)
    assert v["invalid_rate"] == 0.0
    assert v["num_samples"] == 300


def test_invalid_answers_count_as_wrong_and_sit_in_the_last_confusion_column():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, INVALID, 1, 0, INVALID, INVALID])
    metrics = expression_metrics(3)
    metrics.update(preds, target)
    v = summarize(metrics.compute(), CLASSES[:3])
    assert v["war"] == pytest.approx(2 / 6)
    assert v["uar"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert v["invalid_rate"] == pytest.approx(3 / 6)
    assert v["confusion_columns"] == ["neutral", "happiness", "sadness", "invalid"]
    assert v["confusion"] == [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 2]]
    # class 0: tp 1, fp 1 (a class-1 sample), fn 1 (the invalid); class 1: tp 1, fp 0, fn 1; class 2: 0
    assert v["macro_f1"] == pytest.approx((2 / 4 + 2 / 3 + 0.0) / 3)
    assert v["recall"]["sadness"] == 0.0


def test_uar_ignores_classes_without_samples():
    metrics = expression_metrics(4)
    metrics.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    v = summarize(metrics.compute(), CLASSES)
    assert v["uar"] == 1.0
    assert v["recall"]["surprise"] is None


def test_metric_states_are_sums_so_ddp_reduction_equals_one_process():
    preds, target = _random_preds(64, 4, seed=2)
    preds[::7] = INVALID
    whole = expression_metrics(4)
    whole.update(preds, target)
    shards = [expression_metrics(4) for _ in range(2)]
    shards[0].update(preds[::2], target[::2])
    shards[1].update(preds[1::2], target[1::2])
    # what torch.distributed's all_reduce(SUM) does to each state, done by hand
    for name, metric in shards[0].items(keep_base=True, copy_state=False):
        other = dict(shards[1].items(keep_base=True, copy_state=False))[name]
        for state in metric._defaults:
            assert metric._reductions[state].__name__ in ("dim_zero_sum",)
            setattr(metric, state, getattr(metric, state) + getattr(other, state))
    assert summarize(shards[0].compute(), CLASSES) == summarize(whole.compute(), CLASSES)


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [([0, 4], [0, 1], "predicted indices"), ([0, 1], [0, 5], "target indices"), ([0], [0, 1], "shape")],
)
def test_metrics_reject_out_of_range_indices(preds, target, match):
    with pytest.raises(ValueError, match=match):
        expression_metrics(4).update(torch.tensor(preds), torch.tensor(target))


# -- learning-rate schedule and stages ---------------------------------------------------------


def test_lr_factor_warms_up_linearly_then_follows_a_cosine_to_zero():
    from emofer.system import lr_factor

    assert [lr_factor(s, 4, 20, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20, "cosine") == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(15, 4, 20, "constant") == 1.0


@pytest.fixture(scope="module")
def emo_llama_tiny():
    import emofer
    from emofer.model import build_model

    torch.manual_seed(0)
    return build_model(emofer.load_config("emo-llama-tiny", ["model.freeze=[encoder,face_prior]"]))


def _trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def test_stages_switch_parts_and_learning_rates(emo_llama_tiny):
    from emofer.system import EmoFERSystem

    model = emo_llama_tiny
    system = EmoFERSystem(
        model,
        lr=1e-3,
        lr_groups={"llm": 1e-4},
        max_steps=10,
        scheduler="constant",
        stages=[
            {"train": ["fusion"], "steps": 3},
            {"train": ["fusion", "llm"], "lr_groups": {"fusion": 5e-4}},
        ],
    )
    opt = system.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    parts = model.parts()
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not grouped & {id(p) for p in parts["encoder"].parameters()}
    assert {id(p) for p in parts["llm"].parameters() if p.requires_grad} <= grouped or not _trainable(
        parts["llm"]
    )

    def lrs() -> dict[str, set[float]]:
        out: dict[str, set[float]] = {}
        for g in optimizer.param_groups:
            owner = next(n for n, m in parts.items() if any(p is g["params"][0] for p in m.parameters()))
            out.setdefault(owner, set()).add(round(g["lr"], 8))
        return out

    system.apply_stage(system.stage_at(0))
    assert _trainable(parts["fusion"]) and not _trainable(parts["llm"]) and not _trainable(parts["encoder"])
    assert lrs() == {"fusion": {1e-3}, "llm": {1e-4}}
    for _ in range(3):
        optimizer.step()
        schedule.step()
    assert system.stage_at(3) == 1
    system.apply_stage(1)
    assert _trainable(parts["fusion"]) and _trainable(parts["llm"]) and not _trainable(parts["encoder"])
    assert not parts["encoder"].training or not system.training
    assert lrs() == {"fusion": {5e-4}, "llm": {1e-4}}


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ([{"train": ["decoder"]}], "unknown part"),
        ([{"train": ["fusion"]}, {"train": ["llm"]}], "only the last stage"),
        ([{"train": ["fusion"], "epochs": 2}], "unknown key"),
    ],
)
def test_bad_stages_are_errors(emo_llama_tiny, stages, match):
    from emofer.system import EmoFERSystem

    with pytest.raises(ValueError, match=match):
        EmoFERSystem(emo_llama_tiny, stages=stages)


def test_the_feature_cache_refuses_stages_that_train_feature_parts(emo_llama_tiny, tmp_path):
    from emofer.cache import FeatureCache
    from emofer.system import EmoFERSystem

    cache = FeatureCache(tmp_path)
    with pytest.raises(ValueError, match="needs its parts frozen"):
        EmoFERSystem(emo_llama_tiny, stages=[{"train": ["encoder", "fusion"]}], feature_cache=cache)


# -- frozen-feature cache ------------------------------------------------------------------------


def _batch(model, n: int = 4, seed: int = 0) -> dict:
    """Test samples ``seed .. seed+n-1`` of SynthFER, batched by the real data module."""
    from emofer.data import EmoFERDataModule

    dm = EmoFERDataModule(
        {"test": [{"name": "synthfer", "split": "test", "size": n + seed}], "eval_batch_size": n + seed},
        transforms=model.transforms,
    )
    dm.setup("test")
    full = next(iter(dm.test_dataloader()[0]))
    pick = list(range(seed, seed + n))
    return {
        k: (
            [v[i] for i in pick]
            if isinstance(v, list) and k != "classes"
            else v[pick]
            if torch.is_tensor(v)
            else v
        )
        for k, v in full.items()
        if k != "attributes"
    }


def _assert_same_features(a, b):
    torch.testing.assert_close(a.visual, b.visual)
    for name in ("global_feat", "local_feat", "landmarks"):
        torch.testing.assert_close(getattr(a.priors, name), getattr(b.priors, name))
    for key in a.priors.attributes:
        torch.testing.assert_close(a.priors.attributes[key], b.priors.attributes[key])


def test_feature_cache_serves_what_the_frozen_parts_compute_across_instances(emo_llama_tiny, tmp_path):
    from emofer.cache import FeatureCache

    model = emo_llama_tiny.eval()
    batch = _batch(model)
    with torch.no_grad():
        direct = model.extract_features(batch["pixels"], batch["face_pixels"])
    cache = FeatureCache.for_model(model, tmp_path, data={"test": "synthfer"})
    first = cache.features(batch, model)
    assert (cache.hits, cache.misses) == (0, 4)
    _assert_same_features(first, direct)
    again = cache.features(batch, model)
    assert (cache.hits, cache.misses) == (4, 4)
    _assert_same_features(again, direct)
    cache.flush()
    assert len(list(cache.directory.glob("shard-*.safetensors"))) == 1
    assert not list(cache.directory.glob(".*tmp"))

    reopened = FeatureCache.for_model(model, tmp_path, data={"test": "synthfer"})
    assert reopened.directory == cache.directory and len(reopened) == 4
    mixed = _batch(model, n=4, seed=2)  # two cached samples, two new ones
    features = reopened.features(mixed, model)
    assert (reopened.hits, reopened.misses) == (2, 2)
    with torch.no_grad():
        _assert_same_features(features, model.extract_features(mixed["pixels"], mixed["face_pixels"]))


def test_feature_cache_key_follows_weights_and_data(emo_llama_tiny, tmp_path):
    from emofer.cache import cache_key

    key, _ = cache_key(emo_llama_tiny, data={"test": "a"})
    assert cache_key(emo_llama_tiny, data={"test": "b"})[0] != key
    prior = emo_llama_tiny.face_prior
    with torch.no_grad():
        p = next(prior.parameters())
        saved = p.clone()
        p.add_(1.0)
        changed = cache_key(emo_llama_tiny, data={"test": "a"})[0]
        p.copy_(saved)
    assert changed != key
    assert cache_key(emo_llama_tiny, data={"test": "a"})[0] == key


def test_feature_cache_never_serves_features_of_other_pixels(emo_llama_tiny, tmp_path, caplog):
    from emofer.cache import FeatureCache

    model = emo_llama_tiny.eval()
    cache = FeatureCache(tmp_path)
    batch = _batch(model)
    cache.features(batch, model)
    flipped = dict(batch, pixels=batch["pixels"].flip(-1), face_pixels=batch["face_pixels"].flip(-1))
    with caplog.at_level("WARNING"):
        features = cache.features(flipped, model)
    assert cache.changed == 4 and "other input pixels" in caplog.text
    with torch.no_grad():
        _assert_same_features(features, model.extract_features(flipped["pixels"], flipped["face_pixels"]))
    assert torch.equal(cache.features(batch, model).visual, cache.features(batch, model).visual)


# -- evaluation through Lightning ----------------------------------------------------------------


class _CannedModel(torch.nn.Module):
    """A stand-in model whose answers are fixed per sample id (evaluation bookkeeping only)."""

    classes = ["neutral", "happiness", "sadness"]

    def __init__(self, answers: dict[str, tuple[str | None, str]]) -> None:
        super().__init__()
        self.answers = answers
        self.head = torch.nn.Linear(2, 2)
        self.seen_modes: list[str] = []

    def parts(self) -> dict[str, torch.nn.Module]:
        return {"llm": self.head}

    def set_frozen(self, names) -> None:
        self.head.requires_grad_("llm" not in names)

    def predict_batch(self, batch, mode="score", features=None, max_new_tokens=8):
        from emofer.model import Prediction

        self.seen_modes.append(mode)
        return [Prediction(self.answers[i][0], {"neutral": -1.0}, self.answers[i][1]) for i in batch["ids"]]


def test_test_epoch_writes_records_and_counts_invalid_answers():
    import lightning as L
    from torch.utils.data import DataLoader

    from emofer.system import EmoFERSystem

    answers = {
        "b": ("neutral", "neutral."),
        "a": (None, "a cat"),
        "c": ("happiness", "happy"),
        "d": ("contempt", "contempt"),  # outside the evaluated classes: invalid
    }
    batches = [
        {"ids": ["b", "a"], "classes": ["sadness", "neutral"], "targets": torch.tensor([1, 1])},
        {"ids": ["c", "d"], "classes": ["sadness", "neutral"], "targets": torch.tensor([0, 0])},
    ]
    model = _CannedModel(answers)
    system = EmoFERSystem(model, eval_mode="generate", max_new_tokens=4)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.test(system, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert model.seen_modes == ["generate", "generate"]
    results = system.test_results
    assert results["invalid_rate"] == 0.5 and results["war"] == 0.25
    # rows: neutral, happiness, sadness; columns: same, then invalid
    assert results["confusion"] == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]]
    assert results["recall"] == {"neutral": 0.5, "happiness": None, "sadness": 0.0}
    assert [r["id"] for r in system.test_records] == ["a", "b", "c", "d"]
    assert system.test_records[0] == {
        "id": "a",
        "true": "neutral",
        "pred": None,
        "scores": {"neutral": -1.0},
        "text": "a cat",
    }
    assert system.test_records[3]["pred"] is None


def test_trainer_predict_runs_predict_step_in_the_systems_mode():
    import lightning as L
    from torch.utils.data import DataLoader

    from emofer.system import EmoFERSystem

    model = _CannedModel({"a": ("neutral", "calm"), "b": (None, "?")})
    system = EmoFERSystem(model, eval_mode="generate", max_new_tokens=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    batches = [{"ids": ["a", "b"], "classes": ["neutral"], "targets": torch.tensor([0, 0])}]
    out = trainer.predict(system, dataloaders=DataLoader(batches, batch_size=None))
    assert [[p.label for p in preds] for preds in out] == [["neutral", None]] and model.seen_modes == ["generate"]


def test_unknown_true_classes_are_an_error():
    from emofer.system import EmoFERSystem

    system = EmoFERSystem(_CannedModel({"x": ("neutral", "")}))
    batch = {"ids": ["x"], "classes": ["contempt"], "targets": torch.tensor([0])}
    with pytest.raises(ValueError, match="not among the evaluation classes"):
        system.test_step(batch, 0)


def test_feature_cache_of_the_prior_alone_runs_the_trainable_encoder(emo_llama_tiny, tmp_path):
    from emofer.cache import FeatureCache, frozen_feature_parts

    model = emo_llama_tiny.eval()
    model.set_frozen(["face_prior"])
    try:
        assert frozen_feature_parts(model) == ["face_prior"]
        cache = FeatureCache.for_model(model, tmp_path)
        assert cache.parts == ("face_prior",)
        batch = _batch(model)
        cache.features(batch, model)
        features = cache.features(batch, model)
        assert cache.hits == 4
        assert features.visual.requires_grad and not features.priors.global_feat.requires_grad
        with torch.no_grad():
            _assert_same_features(features, model.extract_features(batch["pixels"], batch["face_pixels"]))
        other_encoder_pixels = dict(batch, pixels=batch["pixels"].flip(-1))  # encoder input is not cached
        cache.features(other_encoder_pixels, model)
        assert cache.changed == 0 and cache.hits == 8
    finally:
        model.set_frozen(["encoder", "face_prior"])


def test_compile_trained_compiles_llm_layers_one_by_one_and_keeps_the_loss():
    """train.compile: each decoder layer and the trained fusion compiled in place, same loss, same keys."""
    import emofer
    from emofer.system import compile_trained

    cfg = emofer.load_config("emo-llama-tiny", ["model.freeze=[encoder,face_prior]"])
    torch.manual_seed(0)
    model = emofer.build_model(cfg).train()
    keys = set(model.state_dict())
    g = torch.Generator().manual_seed(0)
    batch = {
        "ids": ["a", "b"],
        "pixels": torch.randn(2, 1, 3, 32, 32, generator=g),
        "face_pixels": torch.randn(2, 1, 3, 32, 32, generator=g),
        "questions": ["Which expression?"] * 2,
        "answers": ["fear", "anger"],
        "classes": list(model.classes),
        "targets": torch.tensor([1, 5]),
        "attributes": {"age": torch.tensor([1, 2]), "gender": torch.tensor([0, 1]), "race": torch.tensor([0, 2])},
    }
    model.cfg.prompt.agr = False
    eager = model(batch)
    # the eager backend traces with dynamo (graph breaks and all) without inductor's minute of C++ builds
    done = compile_trained(model, backend="eager")
    layers = model.llm.model.model.layers
    assert done == [f"fusion: {type(model.fusion).__name__}", f"llm: {len(layers)} x {type(layers[0]).__name__}"]
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert model.encoder._compiled_call_impl is None  # frozen parts run eagerly
    compiled = model(batch)
    torch.testing.assert_close(compiled, eager)
    compiled.backward()
    assert set(model.state_dict()) == keys
    assert any(p.grad is not None for p in model.fusion.parameters())
