"""EVA-ViT-g, the vision tower of BLIP-2, InstructBLIP and LLaMA-VID, on transformers' ``InstructBlipVisionModel``.

BLIP-2's ``eva_vit_g.pth`` (salesforce/LAVIS) holds 40 blocks of a width-1408
ViT-g/14. BLIP-2 and LLaMA-VID build it with ``depth=39`` and no final norm,
so the tower's output is the penultimate block's (its last block is never
run). transformers' ``InstructBlipVisionModel`` is the same network under other
names (its attention's ``qkv.bias`` is EVA's ``cat(q_bias, 0, v_bias)``); this
module builds it without the post-layernorm and reads LAVIS files into it.

The LAVIS key names, the rule that fuses the two biases and the drops live
here (:data:`LAVIS_RENAMES`, :func:`fuse_qkv_bias`, :func:`lavis_drops`), so
the encoder's own ``checkpoint`` loading and the ``eva-lavis`` checkpoint
format (``emofer.checkpoints.eva_lavis``) read the file the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emofer.encoders import ENCODERS
from emofer.encoders._common import token_shape
from emofer.encoders.base import VisionEncoder
from emofer.encoders.hf import _ProcessorTransform

EVA_VIT_G: dict[str, Any] = {
    "hidden_size": 1408,
    "intermediate_size": 6144,  # int(1408 * 4.3637)
    "num_hidden_layers": 39,  # of the file's 40 blocks: BLIP-2 and LLaMA-VID drop the last
    "num_attention_heads": 16,  # 1408 // 88
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "hidden_act": "gelu",
    "initializer_range": 0.02,  # transformers' default (1e-10) would leave a random tower near zero
}
"""``InstructBlipVisionConfig`` fields of LLaMA-VID's EVA-ViT-g (``image_size`` is the encoder's argument)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""LLaMA-VID's image processor (``llamavid/processor/clip-patch14-224``): OpenAI CLIP statistics."""

LAVIS_RENAMES: tuple[tuple[str, str], ...] = (
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layers.\1.layer_norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"encoder.layers.\1.self_attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.qkv_bias", r"encoder.layers.\1.self_attn.qkv.bias"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.layers.\1.mlp.fc\2.\3"),
)
"""LAVIS EVA key (after :func:`fuse_qkv_bias`) → ``InstructBlipVisionModel`` key, as full-match regexes."""

QKV_BIAS = "qkv_bias"
"""The key suffix :func:`fuse_qkv_bias` writes for each block (``blocks.i.attn.qkv_bias``)."""


def fuse_qkv_bias(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each block's ``attn.q_bias`` and ``attn.v_bias`` replaced by ``attn.qkv_bias``.

    EVA adds ``cat(q_bias, zeros, v_bias)`` to its fused qkv projection at run
    time (keys get no bias); transformers stores that sum as ``qkv.bias``.

    Raises:
        KeyError: a block holds one of the two biases without the other (named).
    """
    fused = dict(state)
    for key in [k for k in state if k.endswith(".attn.q_bias")]:
        stem = key[: -len("q_bias")]
        if stem + "v_bias" not in state:
            raise KeyError(f"{key} has no matching {stem}v_bias")
        q, v = fused.pop(stem + "q_bias"), fused.pop(stem + "v_bias")
        fused[stem + QKV_BIAS] = torch.cat([q, torch.zeros_like(q), v])
    lonely = [k for k in fused if k.endswith(".attn.v_bias")]
    if lonely:
        raise KeyError(f"v_bias without q_bias: {lonely}")
    return fused


def lavis_drops(num_layers: int) -> list[tuple[str, str]]:
    """``(regex, reason)`` of the LAVIS keys a ``num_layers``-block tower leaves out."""
    later = rf"blocks\.(?!(?:{'|'.join(str(i) for i in range(num_layers))})\.)\d+\..*" if num_layers else r"blocks\..*"
    return [
        (later, f"EVA blocks after the first {num_layers}: LLaMA-VID and BLIP-2 take the penultimate block's output"),
        (r"(norm|fc_norm|head)\.(weight|bias)", "EVA's final norm / head: LLaMA-VID's tower has none"),
    ]


def resize_pos_embed(pos: torch.Tensor, num_positions: int) -> torch.Tensor:
    """EVA position embeddings ``[1,1+S²,D]`` resized to ``num_positions`` (LLaMA-VID's ``interpolate_pos_embed``).

    The class position is kept; the patch grid is resized bicubically
    (``align_corners=False``), as LLaMA-VID does for its 336 px towers.
    """
    if pos.shape[1] == num_positions:
        return pos
    old, new = math.isqrt(pos.shape[1] - 1), math.isqrt(num_positions - 1)
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def read_lavis_eva(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a LAVIS EVA file (``eva_vit_g.pth``), read with ``weights_only=True``."""
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold an EVA state dict (a {type(state).__name__})")
    return state


def convert_lavis(state: Mapping[str, torch.Tensor], num_layers: int, num_positions: int) -> dict[str, torch.Tensor]:
    """A LAVIS EVA state dict as ``InstructBlipVisionModel`` keys for a ``num_layers``-block tower.

    Raises:
        ValueError: keys that no rename covers and no drop names (listed).
    """
    drops = lavis_drops(num_layers)
    out, unknown = {}, []
    for key, tensor in fuse_qkv_bias(state).items():
        if any(re.fullmatch(p, key) for p, _ in drops):
            continue
        target = next((match.expand(t) for p, t in LAVIS_RENAMES if (match := re.fullmatch(p, key))), None)
        if target is None:
            unknown.append(key)
            continue
        out[target] = resize_pos_embed(tensor, num_positions) if key == "pos_embed" else tensor
    if unknown:
        raise ValueError(f"LAVIS EVA keys that are neither EVA-ViT weights nor dropped: {sorted(unknown)}")
    return out


@ENCODERS.register("eva-vit-g")
class EvaVisionEncoder(VisionEncoder):
    """LLaMA-VID's EVA-ViT-g: every block of BLIP-2's ``eva_vit_g.pth`` but the last, no final norm.

    Output: all tokens of the last kept block, class token first (LLaMA-VID's
    Q-Former reads them all; its token generation drops the class token).

    Args:
        checkpoint: BLIP-2's ``eva_vit_g.pth`` (LAVIS key names); None for random weights.
            Blocks past ``config.num_hidden_layers`` are left out; position
            embeddings are resized when ``image_size`` differs from the file's.
        config: ``InstructBlipVisionConfig`` fields over :data:`EVA_VIT_G`
            (tiny dims for tests).
        image_size: input size (224 for LLaMA-VID's video models, 336 for some image models).
        include_cls: prepend the class token (LLaMA-VID does).
        pad: pad each image to a square of the mean colour before resizing
            (LLaMA-VID's ``image_aspect_ratio: pad``, how its still images were trained).

    Example:
        >>> enc = EvaVisionEncoder(config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        ...                                "num_attention_heads": 2, "patch_size": 8}, image_size=32)
        >>> enc(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 17, 32])
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        config: dict[str, Any] | None = None,
        image_size: int = 224,
        include_cls: bool = True,
        pad: bool = False,
    ) -> None:
        super().__init__()
        from transformers import (
            CLIPImageProcessor,
            InstructBlipVisionConfig,
            InstructBlipVisionModel,
            LlavaImageProcessor,
        )

        fields = {**EVA_VIT_G, **(config or {}), "image_size": image_size}
        model = InstructBlipVisionModel(InstructBlipVisionConfig(**fields))
        model.post_layernorm = nn.Identity()
        if checkpoint is not None:
            cfg = model.config
            num_positions = (image_size // cfg.patch_size) ** 2 + 1
            try:
                state = convert_lavis(read_lavis_eva(checkpoint), cfg.num_hidden_layers, num_positions)
                model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))
            except (KeyError, RuntimeError, ValueError) as err:
                raise ValueError(f"eva-vit-g: {checkpoint} does not fit a {cfg.num_hidden_layers}-block "
                                 f"EVA tower of width {cfg.hidden_size}: {err}") from err
        self.model = model
        self.checkpoint = checkpoint
        self.include_cls = include_cls
        self.image_size = image_size
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        settings = {
            "size": {"shortest_edge": image_size},
            "crop_size": {"height": image_size, "width": image_size},
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
        }
        # LlavaImageProcessor(do_pad=True) pads centred with int(mean * 255), as LLaMA-VID's expand2square
        self.processor = LlavaImageProcessor(do_pad=True, **settings) if pad else CLIPImageProcessor(**settings)
        self.num_tokens, self.embed_dim = token_shape(self, image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=pixels).last_hidden_state
        return tokens if self.include_cls else tokens[:, 1:]

    def transform(self, train: bool = False) -> Callable:
        """LLaMA-VID's CLIP image processor: (pad,) shortest side to ``image_size`` (bicubic), centre crop, CLIP statistics."""
        return _ProcessorTransform(self.processor)
