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


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's own padding (llava/mm_utils.py), restated as the reference."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


@pytest.mark.parametrize("size", [(40, 30), (24, 36)], ids=["wide", "tall"])
def test_llava_original_import_reproduces_transformers_llava(tmp_path, size):
    from transformers import CLIPImageProcessor

    from tests.llava_checkpoints import write_llava_original

    reference = write_llava_original(tmp_path / "llava-v1.5", tmp_path / "clip")
    assert detect_format(tmp_path / "llava-v1.5").name == "llava"
    with pytest.raises(CheckpointError, match="vision tower apart; pass vision="):
        emofer.from_checkpoint(tmp_path / "llava-v1.5")
    model = emofer.from_checkpoint(tmp_path / "llava-v1.5", vision=tmp_path / "clip")
    image = _image(2, size)
    clip = CLIPImageProcessor.from_pretrained(tmp_path / "clip")
    padded = expand2square(image, tuple(int(x * 255) for x in clip.image_mean))
    expected = clip(padded, return_tensors="pt")["pixel_values"]
    pixels = model.encoder.transform()(image)
    assert torch.equal(pixels, expected[0])
    assert not torch.equal(pixels, clip(image, return_tensors="pt")["pixel_values"][0])  # padding matters
    ours = model.answer_logits(image, QUESTION, ANSWER)
    theirs = reference_logits(reference, model.llm, expected, QUESTION, ANSWER, NUM_PATCHES)
    delta = (ours - theirs).abs().max().item()
    assert delta <= 1e-4, delta


def test_llava_original_drops_its_tower_copy_and_names_bad_shards(tmp_path):
    from tests.llava_checkpoints import write_llava_original

    folder = tmp_path / "llava-v1.5"
    write_llava_original(folder, tmp_path / "clip", shards=3)
    shard = folder / "pytorch_model-00001-of-00003.bin"
    state = torch.load(shard, weights_only=True)
    state["model.vision_tower.vision_tower.vision_model.embeddings.class_embedding"] = torch.zeros(32)
    torch.save(state, shard)
    model = emofer.from_checkpoint(folder, vision=tmp_path / "clip")
    dropped = model.import_report.dropped
    assert "LLaVA loads mm_vision_tower" in dropped["model.vision_tower.vision_tower.vision_model.embeddings.class_embedding"]
    state["model.mm_projector.4.weight"] = torch.zeros(1)
    torch.save(state, shard)
    with pytest.raises(CheckpointError, match=r"mm_projector\.4\.weight"):
        emofer.from_checkpoint(folder, vision=tmp_path / "clip")


def test_llava_original_reads_a_whole_clip_model_folder(tmp_path):
    """mm_vision_tower is usually a whole CLIPModel (openai/clip-vit-large-patch14-336): its text tower is dropped."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    from tests.llava_checkpoints import VISION, clip_processor, write_llava_original

    reference = write_llava_original(tmp_path / "llava-v1.5", tmp_path / "clip")
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    whole = CLIPModel(CLIPConfig(vision_config=VISION, text_config=text, projection_dim=16))
    whole.vision_model.load_state_dict(CLIPVisionModel.from_pretrained(tmp_path / "clip").state_dict())
    whole.save_pretrained(tmp_path / "clip-whole")
    clip_processor().save_pretrained(tmp_path / "clip-whole")
    model = emofer.from_checkpoint(tmp_path / "llava-v1.5", vision=tmp_path / "clip-whole")
    reasons = set(model.import_report.dropped.values())
    assert "CLIP's text tower and projections: LLaVA uses the vision tower only" in reasons
    image = _image(4)
    pixels = model.encoder.transform()(image)
    ours = model.answer_logits(image, QUESTION, ANSWER)
    theirs = reference_logits(reference, model.llm, pixels[None], QUESTION, ANSWER, NUM_PATCHES)
    assert (ours - theirs).abs().max().item() <= 1e-4
