"""``llama-vid``: dvlab-research/LLaMA-VID folders (e.g. YanweiLi/llama-vid-7b-full-224-video-fps-1).

Such a folder is a Vicuna checkpoint (``model.*``, an untied ``lm_head``) with
LLaMA-VID's attention modules inside: ``model.vlm_att_query`` (the Q-Former's
query tokens), ``model.vlm_att_ln`` (the layer norm over the image features),
``model.vlm_att_encoder.bert.*`` (the LAVIS BERT Q-Former),
``model.vlm_att_{projector,key_projector,val_projector}`` (token generation)
and ``model.mm_projector.{0,2}`` (``mlp2x_gelu``), written sharded as
``pytorch_model-*.bin`` with ``pytorch_model.bin.index.json`` (or as
safetensors). ``config.json`` says ``model_type: llava``, as transformers'
own LLaVA does; LLaMA-VID's fields (``mm_vision_tower``, ``bert_type``,
``num_query``, ``compress_type``) and the ``vlm_att_*`` keys tell them apart.
The vision tower is BLIP-2's ``eva_vit_g.pth`` (``vision=``), read as the
``eva-lavis`` format reads it.

The Q-Former's keys load into transformers' ``InstructBlipQFormerModel`` after
``embeddings.LayerNorm`` → ``embeddings.layernorm``, ``.attention.self.`` →
``.attention.attention.``, ``.crossattention.self.`` →
``.crossattention.attention.`` (``embeddings.position_ids``, a constant, is dropped).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from emofer.checkpoints import CHECKPOINT_FORMATS
from emofer.checkpoints import _llava as common
from emofer.checkpoints.base import (
    CheckpointError,
    CheckpointFormat,
    Rule,
    read_config,
    read_state,
    weight_files,
)
from emofer.checkpoints.eva_lavis import read_vision, tower_config, vision_rules
from emofer.encoders.eva import read_lavis_eva

log = logging.getLogger(__name__)

FIELDS = ("mm_vision_tower", "bert_type", "num_query")
"""config.json fields only LLaMA-VID writes (with ``compress_type``)."""

VISION_PREFIX = "vision_tower."
"""Where :meth:`LlamaVid.source_state` puts the EVA file's keys (the folder holds none)."""

BERT = "model.vlm_att_encoder.bert."
BERT_HEAD_DIM = 64
"""bert-base-uncased's head width (768 / 12); the head count is not in the checkpoint."""


def weight_keys(path: Path) -> list[str]:
    """The tensor names of a checkpoint folder, from its index or safetensors headers (no tensors read)."""
    for index in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        if (path / index).is_file():
            return list(json.loads((path / index).read_text())["weight_map"])
    keys: list[str] = []
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as handle:
                keys += list(handle.keys())
        else:
            keys += list(torch.load(str(file), map_location="meta", weights_only=True, mmap=True))
    return keys


def read_prefixed(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` only, read from the shards that hold them (not the whole checkpoint)."""
    keys = {k for k in weight_keys(path) if k.startswith(prefix)}
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as handle:
                state.update({k: handle.get_tensor(k) for k in handle.keys() if k in keys})
        else:
            shard = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            state.update({k: v for k, v in shard.items() if k in keys})
    return state


def content_mode(compress_type: str | None) -> str:
    """LLaMA-VID's ``compress_type`` (None, ``mean``, ``grid:k``) as the llama-vid fusion's ``content``."""
    if compress_type is None:
        return "null"
    if compress_type == "mean" or re.fullmatch(r"grid:\d+", compress_type):
        return compress_type
    raise CheckpointError(f"compress_type {compress_type!r} is not one of None, 'mean', 'grid:k'")


def qformer_config(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The llama-vid fusion's BERT Q-Former dims, read off the checkpoint's tensors."""
    try:
        words = state[BERT + "embeddings.word_embeddings.weight"]
        positions = state[BERT + "embeddings.position_embeddings.weight"]
        inner = state[BERT + "encoder.layer.0.intermediate.dense.weight"]
    except KeyError as err:
        raise CheckpointError(f"{path} lacks the Q-Former weight {err.args[0]}") from None
    layers = {int(k[len(BERT) :].split(".")[2]) for k in state if k.startswith(BERT + "encoder.layer.")}
    width = int(words.shape[1])
    cross = sorted({int(k[len(BERT) :].split(".")[2]) for k in state if ".crossattention." in k})
    frequency = cross[1] - cross[0] if len(cross) > 1 else max(layers) + 1
    return {
        "dim": width,
        "depth": max(layers) + 1,
        "num_heads": width // BERT_HEAD_DIM,
        "bert_config": {
            "vocab_size": int(words.shape[0]),
            "max_position_embeddings": int(positions.shape[0]),
            "intermediate_size": int(inner.shape[0]),
            "cross_attention_frequency": frequency,
        },
    }


def visual_prefix(cfg: DictConfig) -> str:
    """Where the LLaMA-VID tokens live in the emofer model: the fusion, or Face Info Mining's visual branch."""
    fusion = cfg.fusion
    if fusion.name == "llama-vid":
        return "fusion."
    if fusion.name == "face-info-mining" and (fusion.get("visual") or {}).get("name") == "llama-vid":
        return "fusion.visual."
    raise CheckpointError(
        f"LLaMA-VID's tokens fill a 'llama-vid' fusion (alone or as face-info-mining's visual branch); "
        f"the config's fusion is {fusion.name!r}"
    )


def qformer_rules(prefix: str) -> list[Rule]:
    """LLaMA-VID's ``model.vlm_att_*`` and ``model.mm_projector`` keys into a llama-vid fusion at ``prefix``."""
    bert = re.escape(BERT)
    return [
        Rule.drop(bert + r"embeddings\.position_ids", "the BERT position ids: a constant buffer (0, 1, 2, ...) transformers rebuilds"),
        Rule.rename(bert + r"embeddings\.LayerNorm\.(weight|bias)", prefix + r"qformer.bert.embeddings.layernorm.\1"),
        Rule.rename(
            bert + r"encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)",
            prefix + r"qformer.bert.encoder.layer.\1.\2.attention.\3",
        ),
        Rule.rename(bert + r"(.+)", prefix + r"qformer.bert.\1"),
        Rule.rename(r"model\.vlm_att_query", prefix + "qformer.query_tokens"),
        Rule.rename(r"model\.vlm_att_ln\.(weight|bias)", prefix + r"qformer.norm.\1"),
        Rule.rename(r"model\.vlm_att_projector\.(weight|bias)", prefix + r"query_proj.\1"),
        Rule.rename(r"model\.vlm_att_key_projector\.(weight|bias)", prefix + r"key_proj.\1"),
        Rule.rename(r"model\.vlm_att_val_projector\.(weight|bias)", prefix + r"value_proj.\1"),
        Rule.rename(r"model\.mm_projector\.(0|2)\.(weight|bias)", prefix + r"projector.\1.\2"),
    ]


@CHECKPOINT_FORMATS.register("llama-vid")
class LlamaVid(CheckpointFormat):
    """LLaMA-VID folders (``model_type: llava`` with ``vlm_att_*`` keys) with EVA-ViT-g from ``vision``."""

    name = "llama-vid"
    needs_vision = True

    def detect(self, path: Path) -> str | None:
        config = read_config(path) if path.is_dir() else {}
        found = [f for f in FIELDS if f in config]
        if not found:
            return None
        try:
            att = sorted({k.split(".")[1] for k in weight_keys(path) if k.startswith("model.vlm_att_")})
        except CheckpointError:
            att = []
        if not att:
            return None
        return (
            f"config.json has model_type {config.get('model_type')!r} with LLaMA-VID's fields "
            f"{ {f: config[f] for f in found} } and the weights hold LLaMA-VID's modules {att}"
        )

    def build_config(self, path: Path, vision: Path | None, base: DictConfig | None) -> DictConfig:
        from emofer.config import load_config

        assert vision is not None  # from_checkpoint checks needs_vision
        config = read_config(path)
        bert_type = str(config.get("bert_type", "qformer"))
        if "qformer" not in bert_type or "pretrain" not in bert_type:
            raise CheckpointError(
                f"{path}: bert_type {bert_type!r} is not supported; emofer reads LLaMA-VID's released "
                "'qformer_pretrain*' Q-Former (with vlm_att_ln)"
            )
        if config.get("mm_projector_type", "linear") != "mlp2x_gelu":
            raise CheckpointError(f"{path}: mm_projector_type {config.get('mm_projector_type')!r} is not mlp2x_gelu")
        if config.get("mm_use_im_start_end"):
            raise CheckpointError(f"{path}: mm_use_im_start_end (<im_start> image <im_end>) is not supported")
        if config.get("mm_vision_select_feature", "patch") != "patch":
            raise CheckpointError(f"{path}: mm_vision_select_feature must be 'patch' (LLaMA-VID's only one)")
        node = OmegaConf.to_container(base, resolve=True) if base is not None else {"model": {}}
        model = node["model"]
        model["encoder"] = self._encoder(path, vision, config, model.get("encoder") or {})
        fusion = {
            **self._fusion_base(model),
            "name": "llama-vid",
            "qformer": "bert",
            "content": content_mode(config.get("compress_type")),
            "qformer_queries": int(config.get("num_query", 32)),
            **qformer_config(read_prefixed(path, BERT), path),
        }
        if (model.get("fusion") or {}).get("name") == "face-info-mining":
            model["fusion"]["visual"] = fusion
        else:
            model["fusion"] = fusion
        if "tokenizer" not in fusion:
            log.warning(
                "%s: LLaMA-VID's Q-Former reads the question through bert-base-uncased's tokenizer, which the "
                "folder does not hold; set model.fusion%s.tokenizer to a local copy before running the model",
                path, ".visual" if "visual" in (model.get("fusion") or {}) else "",
            )
        model["llm"] = self._llm(path, config, model.get("llm") or {})
        model.setdefault("prompt", {})["template"] = "vicuna_v1"  # LLaMA-VID's imgsp_v1 renders the same text
        model["temporal"] = "concat"  # per frame [context, content...], frames in order
        if base is None:
            model.update(face_prior={"name": "none"}, freeze=["encoder"])
        return load_config(node)

    @staticmethod
    def _fusion_base(model: dict[str, Any]) -> dict[str, Any]:
        """The base preset's llama-vid settings LLaMA-VID's checkpoint does not fix (the BERT tokenizer)."""
        old = model.get("fusion") or {}
        old = old.get("visual") if old.get("name") == "face-info-mining" else old
        return {"tokenizer": old["tokenizer"]} if isinstance(old, dict) and old.get("tokenizer") else {}

    @staticmethod
    def _encoder(path: Path, vision: Path, config: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        heads = (old.get("config") or {}).get("num_attention_heads") if old.get("name") == "eva-vit-g" else None
        tower = tower_config(read_lavis_eva(vision), vision, heads)
        width = int(config.get("mm_hidden_size", tower["config"]["hidden_size"]))
        if width != tower["config"]["hidden_size"]:
            raise CheckpointError(
                f"{path} was trained on a {width}-wide tower, but {vision} is {tower['config']['hidden_size']} wide"
            )
        # the image processor LLaMA-VID names (e.g. ./llamavid/processor/clip-patch14-336) sets the input size
        sizes = re.findall(r"\d+", Path(str(config.get("image_processor") or "")).name)
        if sizes and int(sizes[-1]) >= 32:
            tower["image_size"] = int(sizes[-1])
        return {"name": "eva-vit-g", **tower, "pad": config.get("image_aspect_ratio") == "pad"}

    @staticmethod
    def _llm(path: Path, config: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        from transformers import LlamaConfig

        fields = set(LlamaConfig().to_dict())
        text = LlamaConfig(**{k: v for k, v in config.items() if k in fields})
        llm = {
            "name": "causal-lm",
            "config": common.clean(text.to_diff_dict()),
            "tokenizer": str(path.resolve()),
            "dtype": common.dtype_name(config.get("torch_dtype") or config.get("dtype")),
        }
        return {**llm, **{k: old[k] for k in ("lora", "gradient_checkpointing", "trainable", "dtype") if k in old}}

    def source_state(self, path: Path, vision: Path | None) -> dict[str, torch.Tensor]:
        state = read_state(path)
        if vision is not None:
            state.update(read_vision(vision, VISION_PREFIX))
        return state

    def rules(self, cfg: DictConfig) -> list[Rule]:
        return [
            *vision_rules(cfg, re.escape(VISION_PREFIX)),
            *qformer_rules(visual_prefix(cfg)),
            Rule.drop(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "rotary frequencies transformers recomputes"),
            Rule.rename(r"lm_head\.weight", "llm.lm.lm_head.weight"),
            Rule.rename(r"model\.(embed_tokens|layers|norm)\.(.+)", r"llm.lm.model.\1.\2"),
        ]

    def fills(self, cfg: DictConfig) -> list[str]:
        return ["encoder.", visual_prefix(cfg), "llm."]
