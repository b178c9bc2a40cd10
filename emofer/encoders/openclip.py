"""open_clip vision towers: patch tokens from a chosen block, LLaVA-style."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from emofer.encoders import ENCODERS
from emofer.encoders._common import token_shape
from emofer.encoders.base import VisionEncoder

log = logging.getLogger(__name__)


def quick_gelu_for(model_name: str, pretrained: str | None) -> bool:
    """Whether weights ``pretrained`` of ``model_name`` need QuickGELU (OpenAI's CLIP activation).

    A pretrained tag says so in its open_clip config. A local file is read with what an
    ``open_clip_config.json`` beside it says (``model_cfg.quick_gelu``, as on the hub); a
    file named ``*openai*`` is taken for OpenAI's weights. Otherwise GELU is used, with a
    warning when the model has QuickGELU weights (OpenAI's, MetaCLIP's, ...) the file might be.
    """
    import open_clip

    if pretrained is None or model_name.endswith("-quickgelu"):  # random, or the config already says so
        return False
    file = Path(pretrained)
    if not file.is_file():
        return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
    config = file.parent / "open_clip_config.json"
    if config.is_file():
        quick = bool(json.loads(config.read_text()).get("model_cfg", {}).get("quick_gelu", False))
        log.info("%s: %s says quick_gelu=%s", file, config.name, quick)
        return quick
    if "openai" in file.name.lower():
        log.info("%s: an OpenAI CLIP file (by its name): QuickGELU", file)
        return True
    quick_tags = [
        t for t in open_clip.list_pretrained_tags_by_model(model_name)
        if open_clip.get_pretrained_cfg(model_name, t).get("quick_gelu")
    ]
    if quick_tags:
        log.warning(
            "%s: nothing records its activation; running %s with GELU. Weights trained with QuickGELU "
            "(open_clip tags %s, e.g. OpenAI's) need quick_gelu: true, or an open_clip_config.json beside the file",
            file, model_name, ", ".join(quick_tags),
        )
    return False


@ENCODERS.register("openclip")
class OpenClipEncoder(VisionEncoder):
    """Any open_clip vision tower: patch tokens (optionally CLS) from a selectable block.

    The tower and its preprocessing come from
    ``open_clip.create_model_and_transforms``; the text tower is dropped.
    Blocks after the selected one (and the pooling head) are removed where
    the tower supports it, so every parameter left is used.

    Args:
        model_name: an open_clip model name (``open_clip.list_models()``), e.g.
            ``"ViT-L-14"`` or ``"EVA01-g-14"``.
        pretrained: an open_clip pretrained tag (downloads once into the
            open_clip cache) or the path of a local full CLIP checkpoint; None
            for random weights.
        image_size: override the tower's input size (position embeddings are
            resized when weights load).
        layer: index of the transformer block (or stage, for ResNets) whose
            output becomes the tokens; ``-2`` is the penultimate block, as in
            LLaVA and LLaMA-VID.
        include_cls: prepend the class (prefix) token(s) to the patch tokens.
        quick_gelu: use QuickGELU (OpenAI CLIP's activation); None decides from the
            weights (:func:`quick_gelu_for`).

    Build under ``with torch.device("meta"):`` to inspect a large tower
    without allocating it.

    Example:
        >>> enc = ENCODERS.build({"name": "openclip", "model_name": "ViT-B-32"})  # doctest: +SKIP
        >>> enc(torch.randn(2, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([2, 49, 768])
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = None,
        image_size: int | None = None,
        layer: int = -2,
        include_cls: bool = False,
        quick_gelu: bool | None = None,
    ) -> None:
        super().__init__()
        import open_clip

        if quick_gelu is None:
            quick_gelu = quick_gelu_for(model_name, pretrained)
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(
            model_name,
            pretrained=pretrained,
            force_image_size=image_size,
            force_quick_gelu=quick_gelu,
            device=torch.get_default_device(),
        )
        preprocess = open_clip.get_model_preprocess_cfg(model)
        self.visual = model.visual
        self._index = layer if not _prune_after(self.visual, layer) else -1
        self.include_cls = include_cls
        self.model_name = model_name
        size = preprocess["size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.mean = tuple(float(m) for m in preprocess["mean"])
        self.std = tuple(float(s) for s in preprocess["std"])
        self._transforms = {True: train_tf, False: eval_tf}
        self.num_tokens, self.embed_dim = token_shape(self, self.image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            pixels,
            indices=[self._index],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NCHW",
            output_extra_tokens=self.include_cls,
        )
        tokens = out["image_intermediates"][0].flatten(2).transpose(1, 2)
        prefix = out.get("image_intermediates_prefix")
        if self.include_cls and prefix:
            tokens = torch.cat([prefix[0], tokens], dim=1)
        return tokens

    def transform(self, train: bool = False) -> Callable:
        """open_clip's own preprocessing for these weights (train adds its light crop)."""
        return self._transforms[bool(train)]


def _prune_after(visual: nn.Module, layer: int) -> bool:
    """Drops the blocks after ``layer`` and the pooling head; False where unsupported."""
    trunk = getattr(visual, "trunk", None)  # open_clip's adapter around a timm model
    target = trunk if trunk is not None else visual
    if not hasattr(target, "prune_intermediate_layers"):
        return False
    target.prune_intermediate_layers([layer], prune_norm=True, prune_head=True)
    if trunk is not None:
        visual.head = nn.Identity()
    return True


@ENCODERS.register("openclip-vit-l-14")
def openclip_vit_l_14(
    pretrained: str | None = None, layer: int = -2, include_cls: bool = False, quick_gelu: bool | None = None
) -> OpenClipEncoder:
    """CLIP ViT-L/14 at 224 px (LLaVA's tower): 256 patch tokens of width 1024.

    Args:
        pretrained: e.g. ``"openai"`` or a local checkpoint file; None for random weights.
        layer: block whose output is returned (penultimate by default).
        include_cls: prepend the CLS token.
        quick_gelu: QuickGELU (OpenAI's weights); None decides from the weights (:func:`quick_gelu_for`).
    """
    return OpenClipEncoder(
        "ViT-L-14", pretrained=pretrained, layer=layer, include_cls=include_cls, quick_gelu=quick_gelu
    )


@ENCODERS.register("openclip-eva01-g-14")
def openclip_eva01_g_14(
    pretrained: str | None = None, layer: int = -2, include_cls: bool = False
) -> OpenClipEncoder:
    """EVA-ViT-g/14 at 224 px (the EVA01-CLIP-g family LLaMA-VID uses): 256 tokens of width 1408.

    With the default penultimate layer the last of the 40 blocks is dropped,
    as BLIP-2 and LLaMA-VID do (about 0.99B parameters remain).

    Args:
        pretrained: e.g. ``"laion400m_s11b_b41k"`` or a local open_clip
            EVA01-g-14 checkpoint file; None for random weights.
        layer: block whose output is returned (penultimate by default).
        include_cls: prepend the CLS token.
    """
    return OpenClipEncoder("EVA01-g-14", pretrained=pretrained, layer=layer, include_cls=include_cls)
