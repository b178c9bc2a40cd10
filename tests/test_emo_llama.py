"""EMO-LLaMA composed from its presets: tiny models train and classify; the 7B one has the right structure."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import emofer
from emofer.data.instructions import category_question
from emofer.fusion.face_info_mining import FaceInfoMining
from emofer.fusion.llama_vid import LlamaVidTokens
from emofer.labels import FERID7
from emofer.model import EmoFERModel, build_model

TINY_PRESETS = [n for n in emofer.list_presets() if n.startswith("emo-llama-tiny")]


def make_batch(model: EmoFERModel, batch: int = 2, frames: int = 1, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    size = model.encoder.image_size
    targets = torch.randint(len(FERID7), (batch,), generator=gen)
    out = {
        "ids": [f"s{i}" for i in range(batch)],
        "pixels": torch.randn(batch, frames, 3, size, size, generator=gen),
        "questions": [category_question(FERID7, video=frames > 1)] * batch,
        "answers": [FERID7[t] for t in targets.tolist()],
        "classes": list(FERID7),
        "targets": targets,
    }
    if model.face_prior is not None:
        face = model.face_prior.image_size
        out["face_pixels"] = torch.randn(batch, frames, 3, face, face, generator=gen)
    return out


@pytest.fixture(scope="module")
def tiny() -> EmoFERModel:
    torch.manual_seed(0)
    return build_model(emofer.load_config("emo-llama-tiny"))


def test_tiny_is_the_emo_llama_composition(tiny: EmoFERModel) -> None:
    assert isinstance(tiny.fusion, FaceInfoMining)
    assert isinstance(tiny.fusion.visual, LlamaVidTokens)
    assert tiny.fusion.text_guided and tiny.fusion.visual.text_guided
    assert tiny.fusion.num_output_tokens == 1 + 16 + 8  # context + 4x4 content grid + face tokens
    assert tiny.cfg.prompt.agr and tiny.cfg.prompt.template == "vicuna_v1"


@pytest.mark.parametrize("frames", [1, 3])
def test_tiny_forward_backward_image_and_video(tiny: EmoFERModel, frames: int) -> None:
    tiny.train()
    tiny.zero_grad()
    batch = make_batch(tiny, frames=frames)
    tokens, questions = tiny.encode(batch)
    assert tokens.shape == (2, frames * tiny.fusion.num_output_tokens, tiny.llm.hidden_size)
    assert all(q.startswith("The person appears to be") for q in questions)
    loss = tiny(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in tiny.fusion.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"fusion: no gradient for {missing[:5]}"
    # the prior's heads FIM does not read (pose, parsing, ...) rightly get none; its features do
    for name in ("encoder", "face_prior", "llm"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.parts()[name].parameters()), name


@pytest.mark.parametrize("frames", [1, 2])
def test_tiny_training_steps_lower_the_loss(frames: int) -> None:
    torch.manual_seed(0)
    model = build_model(emofer.load_config("emo-llama-tiny")).train()
    batch = make_batch(model, frames=frames, seed=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = model(batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_tiny_classifies_images_and_videos(tiny: EmoFERModel, mode: str) -> None:
    tiny.eval()
    image = Image.new("RGB", (80, 72), (120, 90, 60))
    video = torch.rand(3, 3, 64, 64)
    preds = tiny.classify([image, video], mode=mode)
    assert len(preds) == 2
    for pred in preds:
        if mode == "score":
            assert pred.label in FERID7
            assert set(pred.scores) == set(FERID7)
            assert max(pred.scores, key=pred.scores.get) == pred.label
        else:
            assert pred.label is None or pred.label in FERID7
            assert isinstance(pred.text, str)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_every_tiny_preset_builds_and_runs(preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(emofer.load_config(preset))
    batch = make_batch(model)
    tokens, questions = model.encode(batch)
    assert tokens.shape == (2, model.fusion.num_output_tokens, model.llm.hidden_size)
    assert torch.isfinite(model(batch))
    assert all(q.startswith("The person appears") for q in questions) == bool(model.cfg.prompt.agr)


def test_ablation_presets_change_only_their_factor() -> None:
    base = emofer.load_config("emo-llama-tiny").model
    fim = base.fusion

    def model_of(name: str):
        return emofer.load_config(name).model

    no_fim = model_of("emo-llama-tiny-no-fim")
    assert no_fim.fusion.name == "llama-vid" and no_fim.face_prior == base.face_prior and no_fim.prompt.agr
    assert dict(no_fim.fusion) == {"name": "llama-vid", **{k: v for k, v in fim.visual.items() if k != "name"}}
    no_agr = model_of("emo-llama-tiny-no-agr")
    assert not no_agr.prompt.agr and no_agr.fusion == fim
    global_only = model_of("emo-llama-tiny-global-only")
    assert global_only.fusion == {**fim, "use_local": False}
    local_only = model_of("emo-llama-tiny-local-only")
    assert local_only.fusion == {**fim, "use_global": False}
    for name in ("emo-llama-tiny-no-agr", "emo-llama-tiny-global-only", "emo-llama-tiny-local-only"):
        m = model_of(name)
        assert m.encoder == base.encoder and m.llm == base.llm and m.face_prior == base.face_prior
    base_mllm = model_of("emo-llama-tiny-base")
    assert base_mllm.face_prior.name == "none" and not base_mllm.prompt.agr and base_mllm.fusion.name == "llama-vid"


def test_7b_structure_on_meta_device() -> None:
    """Part sizes within 5% of the published ones: Vicuna-7B ~6.7B, EVA-ViT-g ~1.0B, FaceXFormer ~92M."""
    cfg = emofer.load_config("emo-llama-7b")
    with torch.device("meta"):
        model = build_model(cfg)
    assert next(model.parameters()).device.type == "meta"

    def count(module: torch.nn.Module, lora: bool = False) -> int:
        return sum(p.numel() for n, p in module.named_parameters() if ("lora_" in n) == lora)

    published = {"encoder": 1.0e9, "face_prior": 92e6, "llm": 6.7e9}
    for part, size in published.items():
        assert abs(count(model.parts()[part]) - size) / size < 0.05, (part, count(model.parts()[part]))
    assert model.encoder.embed_dim == 1408 and model.encoder.num_tokens == 257  # EVA-ViT-g: CLS + 16x16 patches
    assert model.llm.hidden_size == 4096
    # LoRA r=64 on q_proj and v_proj of 32 layers: 32 * 2 * 64 * (4096 + 4096)
    assert count(model.llm, lora=True) == 32 * 2 * 64 * 8192
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("encoder.", "face_prior.")) for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith("llm."))
    assert any(n.startswith("fusion.") for n in trainable)
    assert isinstance(model.fusion, FaceInfoMining) and isinstance(model.fusion.visual, LlamaVidTokens)
    assert model.fusion.num_output_tokens == 2 + 32
    assert model.fusion.spec.prior.global_dim == 1024 and model.fusion.spec.prior.num_local == 68
    assert cfg.model.prompt.agr and cfg.model.prompt.template == "vicuna_v1"
