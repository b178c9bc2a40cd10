"""``llava-hf``: transformers' ``LlavaForConditionalGeneration`` folders (e.g. llava-hf/llava-1.5-7b-hf).

Both key layouts load: the hub files' (``vision_tower.vision_model.*``,
``language_model.model.*``, ``language_model.lm_head.*``,
``multi_modal_projector.*``), the transformers-5 ``save_pretrained`` layout
(``vision_tower.*``) and the 4.5x one (``model.vision_tower.*``,
``model.language_model.*``, ``lm_head.*``). The vision layer, the CLS
strategy, the projector, the prompt template and the image processor are read
from the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from emofer.checkpoints import CHECKPOINT_FORMATS
from emofer.checkpoints import _llava as common
from emofer.checkpoints.base import CheckpointError, CheckpointFormat, Rule, read_config, read_state

LLAMA_VID_FIELDS = ("mm_vision_tower", "bert_type", "num_query", "compress_type")
_TOWERS = {"clip_vision_model": "hf-clip", "siglip_vision_model": "hf-siglip"}


def image_processor_config(path: Path) -> dict | None:
    """The folder's image-processor settings (``processor_config.json`` or ``preprocessor_config.json``)."""
    if (path / "processor_config.json").is_file():
        node = json.loads((path / "processor_config.json").read_text()).get("image_processor")
        if isinstance(node, dict):
            return node
    if (path / "preprocessor_config.json").is_file():
        return json.loads((path / "preprocessor_config.json").read_text())
    return None


@CHECKPOINT_FORMATS.register("llava-hf")
class LlavaHF(CheckpointFormat):
    """transformers' LLaVA folders (``LlavaForConditionalGeneration``, ``model_type: llava``)."""

    name = "llava-hf"

    def detect(self, path: Path) -> str | None:
        config = read_config(path) if path.is_dir() else {}
        if config.get("model_type") != "llava":
            return None
        nested = isinstance(config.get("vision_config"), dict) and isinstance(config.get("text_config"), dict)
        foreign = [f for f in LLAMA_VID_FIELDS if f in config]
        if not nested or foreign:
            return None
        return (
            f"config.json has model_type 'llava' with a vision_config "
            f"({config['vision_config'].get('model_type', '?')}) and a text_config "
            f"({config['text_config'].get('model_type', '?')}), as transformers' LlavaForConditionalGeneration "
            f"writes (architectures {config.get('architectures')})"
        )

    def build_config(self, path: Path, vision: Path | None, base: DictConfig | None) -> DictConfig:
        from transformers import LlavaConfig

        if vision is not None:
            raise CheckpointError(f"a llava-hf folder holds its vision tower; do not pass vision= ({vision})")
        config = LlavaConfig.from_pretrained(str(path))
        tower = config.vision_config.model_type
        if tower not in _TOWERS:
            raise CheckpointError(f"{path}: vision tower {tower!r} is not supported; emofer reads {sorted(_TOWERS)}")
        if not isinstance(config.vision_feature_layer, int):
            raise CheckpointError(
                f"{path}: vision_feature_layer {config.vision_feature_layer} concatenates several layers; "
                "emofer's encoders return one"
            )
        if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
            raise CheckpointError(
                f"{path}: the projector (act {config.projector_hidden_act!r}, bias "
                f"{getattr(config, 'multimodal_projector_bias', True)}) is not LLaVA-1.5's mlp2x_gelu"
            )
        strategy = config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise CheckpointError(f"{path}: unknown vision_feature_select_strategy {strategy!r}")
        layers = int(config.vision_config.num_hidden_layers)
        encoder = {
            "name": _TOWERS[tower],
            "config": common.clean(config.vision_config.to_diff_dict()),
            "layer": common.encoder_layer(config.vision_feature_layer, layers),
        }
        if tower == "clip_vision_model":
            encoder["include_cls"] = strategy == "full"
        elif strategy == "default":
            raise CheckpointError(f"{path}: strategy 'default' drops a CLS token, but a SigLIP tower has none")
        processor = image_processor_config(path)
        if processor is not None:
            encoder["processor"] = processor
        llm = {
            "name": "causal-lm",
            "config": common.clean(config.text_config.to_diff_dict()),
            "tokenizer": str(path.resolve()),
            "dtype": common.dtype_name(config.text_config.dtype or config.dtype),
        }
        return common.assemble(encoder, "mlp2x-gelu", llm, common.prompt_template(path), base)

    def source_state(self, path: Path, vision: Path | None) -> dict[str, torch.Tensor]:
        return read_state(path)

    def rules(self, cfg: DictConfig) -> list[Rule]:
        proj = common.projector_prefix(cfg)
        layers = int(cfg.encoder.config.num_hidden_layers)
        return [
            *common.vision_rules(r"(?:model\.)?vision_tower\.", layers, int(cfg.encoder.layer)),
            Rule.rename(r"(?:model\.)?multi_modal_projector\.linear_1\.(weight|bias)", proj + r".0.\1"),
            Rule.rename(r"(?:model\.)?multi_modal_projector\.linear_2\.(weight|bias)", proj + r".2.\1"),
            Rule.rename(r"(?:model\.)?(?:language_model\.)?lm_head\.weight", "llm.lm.lm_head.weight"),
            Rule.rename(r"(?:model\.)?language_model\.(?:model\.)?(.+)", r"llm.lm.model.\1"),
        ]

    def fills(self, cfg: DictConfig) -> list[str]:
        return common.fills(cfg)
