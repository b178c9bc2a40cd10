"""``llava``: the original LLaVA-1.5 repository's folders (haotian-liu/LLaVA, e.g. liuhaotian/llava-v1.5-7b).

Such a folder is a LLaMA checkpoint with the projector inside
(``model.mm_projector.{0,2}.*`` for ``mlp2x_gelu``) and ``model_type:
llava_llama``; LLaVA loads the CLIP tower from ``mm_vision_tower``, a separate
folder here (``vision=``: a ``CLIPVisionModel`` or whole ``CLIPModel`` folder
with its ``preprocessor_config.json``). ``mm_vision_select_layer``,
``mm_vision_select_feature`` and ``image_aspect_ratio: pad`` (pad to a
square of the processor's mean colour before resizing, as LLaVA-1.5 was
trained) are read from ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from emofer.checkpoints import CHECKPOINT_FORMATS
from emofer.checkpoints import _llava as common
from emofer.checkpoints.base import CheckpointError, CheckpointFormat, Rule, read_config, read_state
from emofer.checkpoints.llava_hf import LLAMA_VID_FIELDS

PROJECTORS = {"mlp2x_gelu": "mlp2x-gelu", "linear": "linear"}
FEATURES = {"patch": False, "cls_patch": True}
VISION_PREFIX = "vision_tower."
"""Where :meth:`Llava.source_state` puts the CLIP folder's keys (LLaVA's checkpoint has none there)."""


def clip_processor(vision: Path, pad: bool) -> dict:
    """The CLIP folder's image-processor settings; with ``pad``, LLaVA-1.5's pad-to-square before them.

    ``LlavaImageProcessor(do_pad=True)`` pads with ``int(mean * 255)`` per channel, centred,
    as LLaVA's ``expand2square`` does, then resizes and crops like ``CLIPImageProcessor``.
    """
    file = vision / "preprocessor_config.json"
    if not file.is_file():
        raise CheckpointError(f"the CLIP folder {vision} has no preprocessor_config.json (LLaVA reads it)")
    settings = json.loads(file.read_text())
    if pad:
        settings = {**settings, "image_processor_type": "LlavaImageProcessor", "do_pad": True}
    return settings


@CHECKPOINT_FORMATS.register("llava")
class Llava(CheckpointFormat):
    """LLaVA-1.5 repository folders (``model_type: llava_llama``) with the CLIP tower from ``vision``."""

    name = "llava"
    needs_vision = True

    def detect(self, path: Path) -> str | None:
        config = read_config(path) if path.is_dir() else {}
        kind = config.get("model_type")
        if kind == "llava_llama":
            return f"config.json has model_type 'llava_llama' (LLaVA-1.5's LlavaLlamaForCausalLM), " \
                   f"mm_vision_tower {config.get('mm_vision_tower')!r}"
        foreign = [f for f in LLAMA_VID_FIELDS if f in config and f != "mm_vision_tower"]
        if kind == "llava" and "mm_vision_tower" in config and "vision_config" not in config and not foreign:
            return (
                "config.json has model_type 'llava' with mm_vision_tower and no vision_config (the LLaVA "
                "repository's layout, not transformers') and none of LLaMA-VID's fields"
            )
        return None

    def build_config(self, path: Path, vision: Path | None, base: DictConfig | None) -> DictConfig:
        from transformers import CLIPVisionConfig, LlamaConfig

        assert vision is not None  # from_checkpoint checks needs_vision
        config = read_config(path)
        projector = config.get("mm_projector_type", "linear")
        if projector not in PROJECTORS:
            raise CheckpointError(f"{path}: mm_projector_type {projector!r} is not one of {sorted(PROJECTORS)}")
        feature = config.get("mm_vision_select_feature", "patch")
        if feature not in FEATURES:
            raise CheckpointError(f"{path}: mm_vision_select_feature {feature!r} is not one of {sorted(FEATURES)}")
        if config.get("mm_use_im_start_end"):
            raise CheckpointError(f"{path}: mm_use_im_start_end (<im_start> image <im_end>) is not supported")
        aspect = config.get("image_aspect_ratio") or "square"
        if aspect not in ("pad", "square"):
            raise CheckpointError(f"{path}: image_aspect_ratio {aspect!r} is not supported (pad or square)")
        try:
            tower = CLIPVisionConfig.from_pretrained(str(vision))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{vision} is not a CLIP (vision) model folder: {err}") from None
        layers = int(tower.num_hidden_layers)
        if int(config.get("mm_hidden_size", tower.hidden_size)) != tower.hidden_size:
            raise CheckpointError(
                f"{path} was trained on a {config['mm_hidden_size']}-wide tower, but {vision} is "
                f"{tower.hidden_size} wide"
            )
        encoder = {
            "name": "hf-clip",
            "config": common.clean(tower.to_diff_dict()),
            "layer": common.encoder_layer(int(config.get("mm_vision_select_layer", -2)), layers),
            "include_cls": FEATURES[feature],
            "processor": clip_processor(vision, aspect == "pad"),
        }
        llama_fields = set(LlamaConfig().to_dict())
        text = LlamaConfig(**{k: v for k, v in config.items() if k in llama_fields and k not in common.NOISE})
        llm = {
            "name": "causal-lm",
            "config": common.clean(text.to_diff_dict()),
            "tokenizer": str(path.resolve()),
            "dtype": common.dtype_name(config.get("torch_dtype") or config.get("dtype")),
        }
        return common.assemble(encoder, PROJECTORS[projector], llm, common.prompt_template(path), base)

    def source_state(self, path: Path, vision: Path | None) -> dict[str, torch.Tensor]:
        state = read_state(path)
        if vision is not None:
            state.update({VISION_PREFIX + k: v for k, v in read_state(vision).items()})
        return state

    def rules(self, cfg: DictConfig) -> list[Rule]:
        proj = common.projector_prefix(cfg)
        layers = int(cfg.encoder.config.num_hidden_layers)
        return [
            Rule.drop(
                r"vision_tower\.(text_model\..*|text_projection\..*|visual_projection\..*|logit_scale)",
                "CLIP's text tower and projections: LLaVA uses the vision tower only",
            ),
            *common.vision_rules(r"vision_tower\.", layers, int(cfg.encoder.layer)),
            Rule.drop(
                r"model\.vision_tower\..*",
                "the copy of the CLIP tower in LLaVA's checkpoint: LLaVA loads mm_vision_tower (vision=) instead",
            ),
            Rule.rename(r"model\.mm_projector\.(weight|bias)", proj + r".\1"),
            Rule.rename(r"model\.mm_projector\.(0|2)\.(weight|bias)", proj + r".\1.\2"),
            Rule.rename(r"lm_head\.weight", "llm.lm.lm_head.weight"),
            Rule.rename(r"model\.(.+)", r"llm.lm.model.\1"),
        ]

    def fills(self, cfg: DictConfig) -> list[str]:
        return common.fills(cfg)
