"""Importing LLaVA checkpoints: outputs equal transformers' LlavaForConditionalGeneration, bad keys named."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import emofer
from emofer.checkpoints import CheckpointError, detect_format
from tests.llava_checkpoints import NUM_PATCHES, reference_logits, write_llava_hf

QUESTION = "What is the facial expression of the person in the image?"
ANSWER = "happiness"


def _image(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


@pytest.mark.parametrize("hub_layout", [False, True], ids=["transformers5-layout", "hub-layout"])
def test_llava_hf_import_reproduces_transformers_llava(tmp_path, hub_layout):
    reference = write_llava_hf(tmp_path / "llava", hub_layout=hub_layout)
    assert detect_format(tmp_path / "llava").name == "llava-hf"
    model = emofer.from_checkpoint(tmp_path / "llava")
    assert model.cfg.encoder.layer == 1 and model.cfg.prompt.template == "vicuna_v1"
    assert "encoder.model.encoder.layers.2" not in "".join(model.state_dict())  # layer after -2 dropped
    image = _image()
    pixels = model.encoder.transform()(image)
    from transformers import AutoProcessor

    expected = AutoProcessor.from_pretrained(tmp_path / "llava").image_processor(image, return_tensors="pt")
    assert torch.equal(pixels, expected["pixel_values"][0])
    ours = model.answer_logits({"pixels": pixels[None, None]}, QUESTION, ANSWER)
    theirs = reference_logits(reference, model.llm, pixels[None], QUESTION, ANSWER, NUM_PATCHES)
    assert ours.shape == theirs.shape and ours.shape[1] >= 2
    delta = (ours - theirs).abs().max().item()
    assert delta <= 1e-4, delta
    assert ours.std() > 0.1  # the logits carry signal, not a constant
    raw = model.answer_logits(image, QUESTION, ANSWER)  # the raw-image path gives the same
    assert torch.allclose(raw, ours, atol=1e-6)


def test_llava_hf_full_strategy_keeps_cls(tmp_path):
    reference = write_llava_hf(tmp_path / "llava", strategy="full")
    model = emofer.from_checkpoint(tmp_path / "llava")
    assert model.encoder.num_tokens == NUM_PATCHES + 1
    pixels = model.encoder.transform()(_image(1))
    ours = model.answer_logits({"pixels": pixels[None, None]}, QUESTION, ANSWER)
    theirs = reference_logits(reference, model.llm, pixels[None], QUESTION, ANSWER, NUM_PATCHES + 1)
    assert (ours - theirs).abs().max().item() <= 1e-4


def _edit(folder, change):
    file = folder / "model.safetensors"
    state = load_file(str(file))
    change(state)
    save_file(state, str(file), metadata={"format": "pt"})


def test_extra_missing_and_misshaped_keys_fail_naming_them(tmp_path):
    folder = tmp_path / "llava"
    write_llava_hf(folder)
    _edit(folder, lambda s: s.update({"language_model.model.extra_head.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"language_model\.model\.extra_head\.weight"):
        emofer.from_checkpoint(folder)
    _edit(folder, lambda s: s.pop("language_model.model.extra_head.weight"))
    _edit(folder, lambda s: s.pop("multi_modal_projector.linear_2.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys\): fusion\.proj\.2\.bias"):
        emofer.from_checkpoint(folder)
    write_llava_hf(folder)
    _edit(folder, lambda s: s.update({"multi_modal_projector.linear_1.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"wrong shape: multi_modal_projector\.linear_1\.bias \(3,\)"):
        emofer.from_checkpoint(folder)


def test_unknown_folder_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match=r"no checkpoint format recognises .*'model_type': 'bert'"):
        detect_format(tmp_path)
