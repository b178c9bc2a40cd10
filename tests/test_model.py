"""The assembled model: wiring, training, read-outs, video, AGR, freezing, save/load, raw-input classification."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

import emofer
from emofer.encoders import FACE_PRIORS
from emofer.encoders.base import FacePrior, FacePriorOutput
from emofer.fusion import FUSIONS
from emofer.fusion.base import Fusion
from emofer.llm import LLM_HEADS
from emofer.llm.agr import ATTRIBUTE_LABELS
from emofer.model import EmoFERModel, Features, Prediction, WiringError, build_model

CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
QUESTIONS = ["Which expression?", "What is the facial expression of the person?", "Name the emotion, please."]
ENCODER = {"name": "vit-tiny", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}
TINY_LLM = {
    "causal-lm": {"name": "causal-lm", "path": "tiny-llama"},
    "classifier": {"name": "classifier", "hidden_size": 32},
}


class AttributePrior(FacePrior):
    """Test-only prior: attribute logits read off the pixels (channel 0 votes age 20-29, channel 1 votes 50-59)."""

    def __init__(self) -> None:
        super().__init__()
        self.global_dim, self.local_dim, self.num_local, self.image_size = 8, 4, 68, 16
        self.attribute_labels = dict(ATTRIBUTE_LABELS)
        self.proj = nn.Linear(3, 8)

    def forward(self, pixels: torch.Tensor) -> FacePriorOutput:
        mean = pixels.mean(dim=(2, 3))  # [B,3]
        age = torch.zeros(len(pixels), 8)
        age[:, 2], age[:, 5] = mean[:, 0], mean[:, 1]
        return FacePriorOutput(
            global_feat=self.proj(mean),
            local_feat=torch.zeros(len(pixels), 68, 4),
            attributes={
                "age": age,
                "gender": torch.tensor([[0.0, 1.0]]).expand(len(pixels), 2),
                "race": torch.tensor([[0.0, 0, 0, 1, 0]]).expand(len(pixels), 5),
            },
        )

    def transform(self, train: bool = False):
        from torchvision.transforms import functional as F

        return lambda image: F.to_tensor(image.resize((self.image_size, self.image_size)))


class FixedWidth(Fusion):
    """Test-only fusion that ignores ``spec.out_dim`` (always 7 wide)."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.proj = nn.Linear(spec.visual_dim, 7)
        self.num_output_tokens = spec.num_visual_tokens

    def forward(self, visual, priors=None, text=None):
        return self.proj(visual)


@pytest.fixture
def test_parts():
    """Registers the test-only prior and fusion for one test (at run time, so no other module's
    collection-time parametrization over the registries sees them) and removes them after."""
    FACE_PRIORS.add("test-attribute-prior", AttributePrior, force=True)
    FUSIONS.add("test-fixed-width", FixedWidth, force=True)
    yield
    FACE_PRIORS._entries.pop("test-attribute-prior", None)
    FUSIONS._entries.pop("test-fixed-width", None)


def config(
    llm: str = "causal-lm", fusion: Any = "mlp2x-gelu", llm_kwargs: dict[str, Any] | None = None, **model: Any
) -> dict[str, Any]:
    if llm not in TINY_LLM:
        pytest.fail(f"LLM head {llm!r} has no tiny model test config; add it to TINY_LLM")
    node = {
        "encoder": dict(ENCODER),
        "face_prior": {"name": "none"},
        "fusion": fusion if isinstance(fusion, dict) else {"name": fusion},
        "llm": {**TINY_LLM[llm], **(llm_kwargs or {})},
        "classes": CLASSES,
        "freeze": [],
    }
    node.update(model)
    return {"model": node}


def make_batch(
    size: int = 3, frames: int = 1, pixels: int = 32, seed: int = 0, face: bool = False
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "ids": [f"s{i}" for i in range(size)],
        "pixels": torch.rand(size, frames, 3, pixels, pixels, generator=g),
        "questions": QUESTIONS[:size],
        "answers": ["fear", "happiness", "anger"][:size],
        "classes": CLASSES,
        "targets": torch.tensor([1, 3, 5][:size]),
    }
    if face:
        batch["face_pixels"] = torch.rand(size, frames, 3, 16, 16, generator=g)
    return batch


def train_steps(model: EmoFERModel, batch: dict[str, Any], steps: int, lr: float = 1e-3) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def write_video(path, frames: int = 6, size: int = 64) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for _ in range(frames):
            image = (rng.random((size, size, 3)) * 255).astype("uint8")
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# -- the presets ---------------------------------------------------------------
def test_llava_tiny_trains_and_classifies_in_both_modes(tmp_path) -> None:
    torch.manual_seed(0)
    model = emofer.build_model(emofer.load_config("llava-tiny"))
    assert isinstance(model, EmoFERModel) and model.classes == list(
        emofer.load_config("llava-tiny").model.classes
    )
    assert type(model.fusion).__name__ == "MLP2xGELU" and model.llm.template.name == "vicuna_v1"
    losses = train_steps(model, make_batch(pixels=64), steps=5)
    assert losses[-1] < losses[0], losses

    Image.new("RGB", (50, 40), (200, 120, 90)).save(tmp_path / "face.png")
    write_video(tmp_path / "clip.mp4")
    inputs = [
        Image.new("RGB", (64, 64), (90, 60, 40)),
        str(tmp_path / "face.png"),
        tmp_path / "clip.mp4",
        torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8),
        torch.rand(4, 3, 64, 64),
    ]
    scored = model.classify(inputs, mode="score", num_frames=3)
    assert len(scored) == len(inputs)
    for pred in scored:
        assert pred.label in model.classes and list(pred.scores) == model.classes
        assert all(np.isfinite(v) and v <= 0 for v in pred.scores.values())
        assert pred.label == max(pred.scores, key=pred.scores.get)
    generated = model.classify(inputs, labels=["fear", "anger"], mode="generate")
    assert len(generated) == len(inputs)
    assert all(
        p.label in (None, "fear", "anger") and isinstance(p.text, str) and not p.scores for p in generated
    )
    assert model.training  # classify restores the mode it found


def test_classifier_tiny_learns_and_reads_out_as_classifier() -> None:
    model = emofer.build_model(emofer.load_config("classifier-tiny"))
    assert model.cfg.encoder.name == "cnn-tiny" and model.cfg.llm.name == "classifier"
    batch = make_batch(pixels=64)
    losses = train_steps(model, batch, steps=5)
    assert losses[-1] < losses[0], losses
    model.eval()
    with torch.no_grad():
        preds = model.predict_batch(batch, mode="classifier")
        assert [p.label for p in preds] == [p.label for p in model.predict_batch(batch, mode="score")]
        # its own path (the head's logits, read directly), the numbers of score
        assert [p.scores for p in preds] == [p.scores for p in model.predict_batch(batch, mode="score")]
        assert model.predict_batch(batch, mode="generate")[0].label in CLASSES


# -- every head with the simple fusions -------------------------------------
@pytest.mark.parametrize("fusion", ["mlp2x-gelu", "linear"])
@pytest.mark.parametrize("llm", LLM_HEADS.names())
def test_heads_and_projector_fusions(llm: str, fusion: str) -> None:
    model = build_model(config(llm, fusion))
    batch = make_batch()
    loss = model(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())
    model.eval()
    with torch.no_grad():
        assert model.score_batch(batch).shape == (3, len(CLASSES))
        for mode in ("score", "generate"):
            preds = model.predict_batch(batch, mode=mode)
            assert len(preds) == 3 and all(isinstance(p, Prediction) for p in preds)
        if llm == "classifier":
            assert len(model.predict_batch(batch, mode="classifier")) == 3
        else:
            with pytest.raises(ValueError, match="read-out 'classifier' needs the classifier head"):
                model.predict_batch(batch, mode="classifier")
    with pytest.raises(ValueError, match="unknown read-out mode 'vote'"):
        model.predict_batch(batch, mode="vote")


# -- video, text, AGR ---------------------------------------------------------
@pytest.mark.parametrize(("temporal", "tokens"), [("concat", 3 * 16), ("mean", 16), ("attention", 16)])
def test_video_batches_through_temporal_steps(temporal: str, tokens: int) -> None:
    model = build_model(config(temporal=temporal))
    batch = make_batch(frames=3)
    encoded, questions = model.encode(batch)
    assert encoded.shape == (3, tokens, 64) and questions == QUESTIONS
    model(batch).backward()
    assert any(p.grad is not None for p in model.encoder.parameters())


def test_text_guided_fusion_gets_question_embeddings_per_frame() -> None:
    fusion = {"name": "llama-vid", "dim": 16, "depth": 1, "num_heads": 2, "qformer_queries": 4}
    model = build_model(config(fusion=fusion))
    seen = []
    model.fusion.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    model(make_batch(frames=2))
    emb, mask = seen[0]
    assert emb.shape[0] == 6 and emb.shape[-1] == model.llm.text_dim == 64
    torch.testing.assert_close(emb[0], emb[1])  # both frames of sample 0 read the same question
    expected, _ = model.llm.embed_text(QUESTIONS)
    torch.testing.assert_close(emb[4, : expected.shape[1]], expected[2])


def test_agr_sentence_from_ground_truth_attributes() -> None:
    model = build_model(config(prompt={"agr": True, "agr_source": "ground_truth"}))
    batch = make_batch(size=2)
    batch["attributes"] = {
        "age": torch.tensor([2, -1]),
        "gender": torch.tensor([1, 0]),
        "race": torch.tensor([3, 0]),
    }
    _, questions = model.encode(batch)
    assert questions == [
        "The person appears to be a woman aged 20-29, Asian. Which expression?",
        "The person appears to be a man aged an unknown age, White. What is the facial expression of the person?",
    ]
    del batch["attributes"]
    with pytest.raises(ValueError, match="agr_source is 'ground_truth' but the batch has no 'attributes'"):
        model.encode(batch)


def test_agr_sentence_from_the_prior_averages_frames(test_parts) -> None:
    model = build_model(config(face_prior={"name": "test-attribute-prior"}, prompt={"agr": True}))
    batch = make_batch(size=1, frames=2, face=True)
    face = torch.zeros(1, 2, 3, 16, 16)
    face[0, 0, 0] = 6.0  # frame 0: confidently 20-29
    face[0, 1, 1] = 1.0  # frame 1: weakly 50-59
    batch["face_pixels"] = face
    _, questions = model.encode(batch)
    assert questions == ["The person appears to be a woman aged 20-29, Asian. Which expression?"]
    batch["face_pixels"] = face[:, 1:]
    batch["pixels"] = batch["pixels"][:, 1:]
    assert model.encode(batch)[1][0].startswith("The person appears to be a woman aged 50-59")


# -- wiring errors --------------------------------------------------------------
def test_wiring_errors_name_both_parts(test_parts) -> None:
    with pytest.raises(
        WiringError, match=r"fusion 'face-info-mining' needs a face prior, but face_prior is 'none'"
    ):
        build_model(config(fusion="face-info-mining"))
    with pytest.raises(
        WiringError, match=r"prompt\.agr is on with agr_source 'predicted', but face_prior is 'none'"
    ):
        build_model(config(prompt={"agr": True}))
    with pytest.raises(
        WiringError,
        match=r"fusion 'test-fixed-width' outputs tokens of width 7, but LLM head 'causal-lm' reads width 64",
    ):
        build_model(config(fusion="test-fixed-width"))
    with pytest.raises(
        WiringError,
        match=r"fusion 'face-info-mining' cannot be wired to encoder 'vit-tiny' \(embed_dim 32, 16 tokens\), "
        r"face prior 'test-attribute-prior' and LLM head 'causal-lm' \(hidden_size 64\): face-info-mining: "
        r"use_task_tokens=true",
    ):
        build_model(
            config(
                fusion={"name": "face-info-mining", "use_task_tokens": True, "dim": 16, "num_heads": 2},
                face_prior={"name": "test-attribute-prior"},
            )
        )
    with pytest.raises(WiringError, match=r"set the prompt template with model\.prompt\.template"):
        build_model(config(llm_kwargs={"template": "plain"}))
    with pytest.raises(WiringError, match=r"freeze lists unknown part\(s\) \['projector'\]"):
        build_model(config(freeze=["projector"]))


# -- freezing, features ---------------------------------------------------------
def test_freeze_policy_keeps_frozen_parts_in_eval_mode() -> None:
    model = build_model(config(freeze=["encoder"]))
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.llm.parameters())
    model.train()
    assert not model.encoder.training and model.fusion.training and model.llm.training
    assert set(model.parts()) == {"encoder", "fusion", "llm"}
    model.set_frozen(["llm", "fusion"])
    assert all(p.requires_grad for p in model.encoder.parameters()) and model.encoder.training
    assert not any(p.requires_grad for p in model.parts()["fusion"].parameters()) and not model.llm.training
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['vision'\]"):
        model.set_frozen(["vision"])


def test_precomputed_features_give_the_same_loss() -> None:
    model = build_model(config()).eval()
    batch = make_batch(frames=2)
    features = model.extract_features(batch["pixels"])
    assert isinstance(features, Features) and features.visual.shape == (6, 16, 32) and features.priors is None
    torch.testing.assert_close(model(batch, features=features), model(batch))


def test_build_model_accepts_node_dict_and_builds_on_meta_device() -> None:
    cfg = emofer.load_config(config())
    assert isinstance(build_model(cfg.model), EmoFERModel)
    cfg.model.llm = {
        "name": "causal-lm",
        "config": {
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
    }
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.llm.hidden_size == 256 and model.fusion.proj[2].out_features == 256


# -- save / load ------------------------------------------------------------------
def assert_same_outputs(a: EmoFERModel, b: EmoFERModel, batch: dict[str, Any]) -> None:
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a.score_batch(batch), b.score_batch(batch))
        assert a.generate_batch(batch, max_new_tokens=4) == b.generate_batch(batch, max_new_tokens=4)
        assert torch.equal(a(batch), b(batch))


def test_save_and_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = emofer.build_model(emofer.load_config("llava-tiny"))
    batch = make_batch(pixels=64)
    train_steps(model, batch, steps=1)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "manifest.json", "model.safetensors"]
    loaded = EmoFERModel.from_pretrained(tmp_path)
    assert_same_outputs(model, loaded, batch)
    assert loaded.cfg == model.cfg


def test_round_trip_with_lora_stores_only_the_adapter(tmp_path) -> None:
    model = build_model(config(llm_kwargs={"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}))
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    batch = make_batch()
    train_steps(model, batch, steps=1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert json.loads(f.metadata()["aliases"]) == {}
    assert not any(k.startswith("llm.") for k in keys)  # base from tiny-llama, adapter from peft
    assert any(k.startswith("fusion.") for k in keys) and any(k.startswith("encoder.") for k in keys)
    assert_same_outputs(model, EmoFERModel.from_pretrained(tmp_path), batch)


def test_round_trip_of_the_classifier_and_a_mismatched_config(tmp_path) -> None:
    model = emofer.build_model(emofer.load_config("classifier-tiny"))
    batch = make_batch(pixels=64)
    train_steps(model, batch, steps=2)  # batch-norm statistics move too
    model.save_pretrained(tmp_path / "cls")
    loaded = EmoFERModel.from_pretrained(tmp_path / "cls")
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.score_batch(batch), loaded.score_batch(batch))
    (tmp_path / "cls" / "config.yaml").write_text(
        emofer.config.to_yaml(emofer.load_config(config(llm="classifier")))
    )
    with pytest.raises(RuntimeError, match="does not fit this model"):  # config.yaml may be edited: warned
        EmoFERModel.from_pretrained(tmp_path / "cls")
    with pytest.raises(FileNotFoundError, match="holds no config.yaml"):
        EmoFERModel.from_pretrained(tmp_path / "nothing")


def test_load_weights_keeps_absent_parts_at_initialisation_only_when_asked(tmp_path) -> None:
    base = emofer.build_model(emofer.load_config(config(llm="classifier")))
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    richer = emofer.build_model(
        emofer.load_config(config(llm="classifier", face_prior={"name": "facexformer-tiny", "image_size": 32}))
    )
    prior_before = {k: v.clone() for k, v in richer.face_prior.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"does not fit this model: missing \['face_prior\."):
        richer.load_weights(tmp_path / "base")
    kept = richer.load_weights(tmp_path / "base", missing="keep")
    assert kept == ["face_prior"]
    assert all(torch.equal(v, richer.face_prior.state_dict()[k]) for k, v in prior_before.items())
    loaded = richer.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in base.state_dict().items())
    with pytest.raises(RuntimeError, match="unexpected"):  # the other way round: the prior has no place
        richer.save_pretrained(tmp_path / "richer")
        base.load_weights(tmp_path / "richer", missing="keep")


def test_kept_parts_names_the_shortest_prefixes() -> None:
    from emofer.model import kept_parts

    absent = ["fusion.face_queries", "fusion.face_proj.weight", "fusion.face_proj.bias"]
    present = {"fusion.visual.proj.weight", "llm.head.weight"}
    assert kept_parts(absent, present) == ["fusion.face_proj", "fusion.face_queries"]
    assert kept_parts(["face_prior.a.b"], {"encoder.x"}) == ["face_prior"]
