"""Tiny random LLaVA checkpoints in their real on-disk layouts, and transformers' LLaVA as the reference.

``write_llava_hf`` builds transformers' ``LlavaForConditionalGeneration`` in-process and
writes it with ``save_pretrained`` (optionally renamed into the hub files' key layout);
``write_llava_original`` writes the same weights as the LLaVA-1.5 repository saves them
(``model_type: llava_llama``, ``model.mm_projector.{0,2}``, sharded ``.bin`` with an
index, the CLIP tower in a separate folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emofer.testing import TINY_LLAMA_CONFIG, tiny_llm_dir

LLAVA15_CHAT = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% else %}ASSISTANT: {{ message['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 28,
    "patch_size": 7,
    "projection_dim": 16,
}
NUM_PATCHES = (28 // 7) ** 2


def tiny_llava(seed: int = 0, strategy: str = "default"):
    """transformers' LLaVA at tiny random dims, its tokenizer (with ``<image>``) and image processor."""
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tok = AutoTokenizer.from_pretrained(tiny_llm_dir())
    tok.add_tokens(["<image>"], special_tokens=True)
    text = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_LLAMA_CONFIG,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
        image_seq_length=NUM_PATCHES + (strategy == "full"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
        for p in model.model.multi_modal_projector.parameters():  # visible image tokens, not ~0
            torch.nn.init.normal_(p, std=0.2)
    return model, tok


def clip_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})


def write_llava_hf(path: Path, hub_layout: bool = False, seed: int = 0, strategy: str = "default"):
    """A transformers LLaVA folder (``save_pretrained``); ``hub_layout`` renames ``vision_tower.*``
    to the hub files' ``vision_tower.vision_model.*``. Returns the in-memory reference model."""
    from safetensors.torch import load_file, save_file
    from transformers import LlavaProcessor

    model, tok = tiny_llava(seed, strategy)
    model.save_pretrained(path)
    processor = LlavaProcessor(
        image_processor=clip_processor(),
        tokenizer=tok,
        patch_size=7,
        vision_feature_select_strategy=strategy,
        chat_template=LLAVA15_CHAT,
    )
    processor.save_pretrained(path)
    if hub_layout:
        state = load_file(str(path / "model.safetensors"))
        state = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in state.items()}
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return model


def write_llava_original(path: Path, vision: Path, seed: int = 0, shards: int = 2):
    """The same tiny LLaVA as the LLaVA-1.5 repository writes it, and its CLIP tower folder.

    Returns the reference ``LlavaForConditionalGeneration``.
    """
    from transformers import CLIPVisionModel

    model, tok = tiny_llava(seed)
    tower = CLIPVisionModel(model.config.vision_config)
    tower.load_state_dict(model.model.vision_tower.state_dict())
    tower.save_pretrained(vision)
    clip_processor().save_pretrained(vision)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.language_model."):
            state["model." + key.removeprefix("model.language_model.")] = value
        elif key.startswith("model.multi_modal_projector."):
            index = {"linear_1": "0", "linear_2": "2"}[key.split(".")[2]]
            state[f"model.mm_projector.{index}.{key.split('.')[-1]}"] = value
        elif key == "lm_head.weight":
            state[key] = value
    text = model.config.text_config.to_dict()
    config = {
        **{k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "vocab_size",
                                "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
                                "initializer_range", "hidden_act")},
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": VISION["hidden_size"],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    keys = sorted(state)
    weight_map = {}
    for n in range(shards):
        name = f"pytorch_model-{n + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[n::shards]}
        torch.save(part, path / name)
        weight_map.update({k: name for k in part})
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tok.save_pretrained(path)
    return model


def reference_logits(model, llm, pixels: torch.Tensor, question: str, answer: str, num_visual: int) -> torch.Tensor:
    """transformers' LLaVA's logits predicting the answer tokens, on emofer's packed token ids."""
    packed = llm.pack(num_visual, [question], [answer])
    ids = packed.input_ids.clone()
    ids[packed.visual_mask] = model.config.image_token_index
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels, attention_mask=packed.attention_mask).logits
    where = packed.labels[:, 1:] != -100
    return logits[:, :-1][where][None]
