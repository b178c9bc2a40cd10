"""``eva-lavis``: BLIP-2/LAVIS EVA-ViT-g files (``eva_vit_g.pth``) into the ``eva-vit-g`` encoder.

The file holds a bare state dict under LAVIS names (``cls_token``,
``pos_embed``, ``patch_embed.proj.*``, ``blocks.i.{norm1,attn,norm2,mlp}.*``,
each attention with ``q_bias`` and ``v_bias``). The key map and what it drops
live with the encoder (:mod:`emofer.encoders.eva`); this module turns them into
:class:`~emofer.checkpoints.base.Rule` s. The ``llama-vid`` format reads its
vision tower through the same functions.

A file holds only a vision tower, so an import needs a preset whose other
parts stay at initialisation (``cfg=``, ``-c``), e.g. ``emo-llama-7b``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from emofer.checkpoints import CHECKPOINT_FORMATS
from emofer.checkpoints.base import CheckpointError, CheckpointFormat, Rule
from emofer.encoders.eva import (
    EVA_VIT_G,
    LAVIS_RENAMES,
    fuse_qkv_bias,
    lavis_drops,
    read_lavis_eva,
    resize_pos_embed,
)

EVA_HEAD_DIM = 88
"""EVA-ViT-g's attention head width (1408 / 16); the head count is not in the file."""


def read_vision(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """A LAVIS EVA file's tensors under ``prefix`` + their LAVIS names, each block's biases fused.

    ``q_bias`` and ``v_bias`` become one ``attn.qkv_bias`` = ``cat(q_bias, 0, v_bias)``
    (what EVA adds at run time), the only key that is not the file's own.
    """
    try:
        state = fuse_qkv_bias(read_lavis_eva(path))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    return {prefix + k: v for k, v in state.items()}


def tower_config(state: dict[str, torch.Tensor], path: Path, heads: int | None = None) -> dict[str, Any]:
    """``eva-vit-g`` encoder kwargs (config and image size) read off a LAVIS EVA state dict.

    The encoder keeps every block but the last, as LLaMA-VID and BLIP-2 do.
    """
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    lacking = [k for k in needed if k not in state]
    if lacking:
        raise CheckpointError(f"{path} is not a LAVIS EVA file: it lacks {lacking}")
    width = int(state["cls_token"].shape[-1])
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if heads is None:
        if width % EVA_HEAD_DIM:
            raise CheckpointError(
                f"{path}: width {width} is not a multiple of EVA-ViT-g's head width {EVA_HEAD_DIM}; "
                "give the head count in the encoder config of a preset (cfg=...)"
            )
        heads = width // EVA_HEAD_DIM
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    config = {
        **{k: EVA_VIT_G[k] for k in ("layer_norm_eps", "qkv_bias", "hidden_act")},
        "hidden_size": width,
        "intermediate_size": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": blocks - 1,
        "num_attention_heads": heads,
        "patch_size": patch,
    }
    return {"config": config, "image_size": math.isqrt(state["pos_embed"].shape[1] - 1) * patch}


def vision_rules(cfg: DictConfig, source_prefix: str = "") -> list[Rule]:
    """Rules from LAVIS EVA keys (under ``source_prefix``) into ``cfg``'s ``eva-vit-g`` encoder."""
    enc = cfg.encoder
    if enc.name != "eva-vit-g":
        raise CheckpointError(f"an EVA-ViT-g tower fills an 'eva-vit-g' encoder, but the config's is {enc.name!r}")
    fields = {**EVA_VIT_G, **OmegaConf.to_container(enc.get("config") or {}, resolve=True)}
    image_size = int(enc.get("image_size", 224))
    num_positions = (image_size // int(fields["patch_size"])) ** 2 + 1
    rules = [Rule.drop(source_prefix + pattern, reason) for pattern, reason in lavis_drops(fields["num_hidden_layers"])]
    for pattern, target in LAVIS_RENAMES:
        resize = (lambda t: resize_pos_embed(t, num_positions)) if pattern == "pos_embed" else None
        rules.append(Rule.rename(source_prefix + pattern, "encoder.model." + target, transform=resize))
    return rules


@CHECKPOINT_FORMATS.register("eva-lavis")
class EvaLavis(CheckpointFormat):
    """A BLIP-2/LAVIS EVA-ViT-g file (``eva_vit_g.pth``): the vision tower of BLIP-2 and LLaMA-VID."""

    name = "eva-lavis"

    def detect(self, path: Path) -> str | None:
        if not path.is_file() or path.suffix not in (".pth", ".pt", ".bin"):
            return None
        try:
            state = read_lavis_eva(path)
        except Exception:  # noqa: BLE001 - any unreadable file is simply not this format
            return None
        if not {"cls_token", "pos_embed", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias"} <= set(state):
            return None
        blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        return f"a file with LAVIS EVA keys (cls_token, pos_embed, {blocks} blocks with q_bias/v_bias)"

    def build_config(self, path: Path, vision: Path | None, base: DictConfig | None) -> DictConfig:
        from emofer.config import load_config

        if vision is not None:
            raise CheckpointError(f"an eva-lavis file is itself a vision tower; do not pass vision= ({vision})")
        if base is None:
            raise CheckpointError(
                f"{path} holds only a vision tower; give a preset whose encoder it fills and whose other parts "
                "stay at initialisation (cfg=..., -c; e.g. emo-llama-7b)"
            )
        node = OmegaConf.to_container(base, resolve=True)
        old = node["model"].get("encoder", {})
        heads = (old.get("config") or {}).get("num_attention_heads") if old.get("name") == "eva-vit-g" else None
        tower = tower_config(read_lavis_eva(path), path, heads)
        node["model"]["encoder"] = {"name": "eva-vit-g", **tower}
        return load_config(node)

    def source_state(self, path: Path, vision: Path | None) -> dict[str, torch.Tensor]:
        return read_vision(path)

    def rules(self, cfg: DictConfig) -> list[Rule]:
        return vision_rules(cfg)

    def fills(self, cfg: DictConfig) -> list[str]:
        return ["encoder."]
