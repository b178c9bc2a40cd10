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


def test_llava_hf_pad_processor_pads_to_square_like_llava(tmp_path):
    from transformers import CLIPImageProcessor

    reference = write_llava_hf(tmp_path / "llava", pad=True)
    model = emofer.from_checkpoint(tmp_path / "llava")
    image = _image(6, (44, 26))
    clip = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    expected = clip(expand2square(image, tuple(int(x * 255) for x in clip.image_mean)), return_tensors="pt")
    pixels = model.encoder.transform()(image)
    assert torch.equal(pixels, expected["pixel_values"][0])
    ours = model.answer_logits(image, QUESTION, ANSWER)
    theirs = reference_logits(reference, model.llm, pixels[None], QUESTION, ANSWER, NUM_PATCHES)
    assert (ours - theirs).abs().max().item() <= 1e-4


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


LLAVA15_7B_HF = {  # llava-hf/llava-1.5-7b-hf's config.json (transformers 4.36 wrote it)
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}


def test_llava_1_5_7b_hf_keys_map_at_full_size_on_the_meta_device(tmp_path):
    """The hub's config and key names (every tensor, at its real shape) map onto the model emofer builds."""
    import json

    from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    from emofer.checkpoints import CHECKPOINT_FORMATS, map_state
    from emofer.testing import tiny_llm_dir

    folder = tmp_path / "llava-1.5-7b-hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAVA15_7B_HF))
    AutoTokenizer.from_pretrained(tiny_llm_dir()).save_pretrained(folder)  # emofer reads the folder's tokenizer
    fmt = CHECKPOINT_FORMATS.get("llava-hf")()
    cfg = fmt.build_config(folder, None, None)
    assert cfg.model.encoder.layer == 22 and not cfg.model.encoder.include_cls
    assert cfg.model.llm.dtype == "float16" and cfg.model.llm.config.vocab_size == 32064
    with torch.device("meta"):
        model = emofer.build_model(cfg)
        reference = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(folder))
    assert model.encoder.num_tokens == 576 and model.llm.hidden_size == 4096
    hub = {}
    for key, value in reference.state_dict().items():  # the hub files' names (transformers 4.36)
        key = key.replace("model.vision_tower.", "vision_tower.vision_model.")
        key = key.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
        hub[key.replace("model.multi_modal_projector.", "multi_modal_projector.")] = value
    assert "language_model.model.layers.31.mlp.down_proj.weight" in hub
    assert "vision_tower.vision_model.encoder.layers.23.mlp.fc2.weight" in hub
    mapped = map_state(hub, fmt.rules(model.cfg), model, fmt.fills(model.cfg))
    assert mapped.kept == [] and len(mapped.state) == len(model.state_dict())
    assert sorted(set(mapped.dropped.values())) == [
        "CLIP's post-layernorm: LLaVA reads an encoder layer's hidden state, never the pooled output",
        "vision layers after the one LLaVA reads (layer 22 of 0..23)",
    ]


LLAVA_V15_7B = {  # liuhaotian/llava-v1.5-7b's config.json (the LLaVA repository wrote it)
    "_name_or_path": "./checkpoints/vicuna-7b-v1-5", "architectures": ["LlavaLlamaForCausalLM"],
    "bos_token_id": 1, "eos_token_id": 2, "freeze_mm_mlp_adapter": False, "hidden_act": "silu",
    "hidden_size": 4096, "image_aspect_ratio": "pad", "initializer_range": 0.02, "intermediate_size": 11008,
    "max_length": 4096, "max_position_embeddings": 4096, "mm_hidden_size": 1024, "mm_patch_merge_type": "flat",
    "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "model_type": "llava_llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pad_token_id": 0,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.31.0",
    "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False,
    "use_cache": True, "use_mm_proj": True, "vocab_size": 32000,
}


def test_llava_v1_5_7b_keys_map_at_full_size_on_the_meta_device(tmp_path):
    """LLaVA-1.5-7B's config, its key names and a whole CLIP ViT-L/14-336 folder, at real shapes."""
    import json

    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, LlamaConfig, LlamaForCausalLM

    from emofer.checkpoints import CHECKPOINT_FORMATS, map_state
    from emofer.testing import tiny_llm_dir

    folder, clip = tmp_path / "llava-v1.5-7b", tmp_path / "clip-vit-large-patch14-336"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAVA_V15_7B))
    AutoTokenizer.from_pretrained(tiny_llm_dir()).save_pretrained(folder)
    vision = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "num_attention_heads": 16,
              "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768}
    clip_config = CLIPConfig(vision_config=vision, projection_dim=768)
    clip_config.save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(clip)
    fmt = CHECKPOINT_FORMATS.get("llava")()
    cfg = fmt.build_config(folder, clip, None)
    assert cfg.model.encoder.layer == 22 and cfg.model.encoder.processor.do_pad
    assert cfg.model.llm.config.num_hidden_layers == 32 and cfg.model.llm.dtype == "float16"
    with torch.device("meta"):
        model = emofer.build_model(cfg)
        from transformers import CLIPModel

        tower = CLIPModel(clip_config)
        llama = LlamaForCausalLM(LlamaConfig(**{k: LLAVA_V15_7B[k] for k in ("hidden_size", "intermediate_size",
                                                "num_hidden_layers", "num_attention_heads", "vocab_size")}))
    source = dict(llama.state_dict())
    shapes = {"0.weight": (4096, 1024), "0.bias": (4096,), "2.weight": (4096, 4096), "2.bias": (4096,)}
    source.update({f"model.mm_projector.{k}": torch.empty(s, device="meta") for k, s in shapes.items()})
    source.update({f"vision_tower.{k}": v for k, v in tower.state_dict().items()})  # as source_state reads them
    assert model.encoder.num_tokens == 576
    mapped = map_state(source, fmt.rules(model.cfg), model, fmt.fills(model.cfg))
    assert mapped.kept == [] and len(mapped.state) == len(model.state_dict())
    reasons = set(mapped.dropped.values())
    assert "CLIP's text tower and projections: LLaVA uses the vision tower only" in reasons
    assert "vision layers after the one LLaVA reads (layer 22 of 0..23)" in reasons
