"""Hugging Face ``CLIPVisionModel`` / ``SiglipVisionModel`` towers as token encoders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emofer.encoders import ENCODERS
from emofer.encoders._common import token_shape
from emofer.encoders.base import VisionEncoder

_FAMILIES = {
    # family: (model class, config class, image-processor class, has a CLS token)
    "clip": ("CLIPVisionModel", "CLIPVisionConfig", "CLIPImageProcessor", True),
    "siglip": ("SiglipVisionModel", "SiglipVisionConfig", "SiglipImageProcessor", False),
}


class HFVisionEncoder(VisionEncoder):
    """A transformers vision tower: hidden states of a chosen layer as tokens.

    Layers after the selected one, the post-layernorm and any pooling head
    are removed, so every parameter left is used.

    Args:
        family: ``"clip"`` or ``"siglip"``.
        path: a local directory written by ``save_pretrained`` (the vision
            model or the whole CLIP/SigLIP model); its
            ``preprocessor_config.json`` defines the preprocessing when present.
        config: a vision-config dict (random weights), used when ``path`` is None.
        layer: index of the encoder layer whose output becomes the tokens
            (``-2`` the penultimate, as LLaVA uses).
        include_cls: prepend CLIP's class token (SigLIP has none).
        processor: an image-processor config (what ``preprocessor_config.json`` holds, with
            ``image_processor_type``, e.g. ``LlavaImageProcessor`` with ``do_pad: true`` for
            LLaVA-1.5's pad-to-square); overrides the folder's and the default one.
    """

    def __init__(
        self,
        family: str,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        layer: int = -2,
        include_cls: bool = False,
        processor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import transformers

        if family not in _FAMILIES:
            raise ValueError(f"unknown transformers vision family {family!r}; use one of {sorted(_FAMILIES)}")
        model_name, config_name, processor_name, has_cls = _FAMILIES[family]
        model_cls = getattr(transformers, model_name)
        processor_cls = getattr(transformers, processor_name)
        if (path is None) == (config is None):
            raise ValueError(
                f"hf-{family}: give exactly one of 'path' (a local directory) or 'config' (a dict)"
            )
        if path is not None:
            model, info = model_cls.from_pretrained(path, output_loading_info=True)
            if info["missing_keys"]:
                raise ValueError(
                    f"hf-{family}: {path} lacks weights for {sorted(info['missing_keys'])}; "
                    "is it a saved CLIP/SigLIP (vision) model?"
                )
        else:
            model = model_cls(getattr(transformers, config_name)(**config))
        image_size = int(model.config.image_size)
        if processor is not None:
            settings = dict(processor)
            kind = settings.pop("image_processor_type", processor_name)
            if not hasattr(transformers, kind):
                raise ValueError(f"hf-{family}: unknown image_processor_type {kind!r} in 'processor'")
            processor = getattr(transformers, kind).from_dict(settings)
        elif path is not None and (Path(path) / "preprocessor_config.json").is_file():
            processor = transformers.AutoImageProcessor.from_pretrained(path)
        elif family == "clip":
            size = {"height": image_size, "width": image_size}
            processor = processor_cls(size={"shortest_edge": image_size}, crop_size=size)
        else:
            processor = processor_cls(size={"height": image_size, "width": image_size})
        _keep_up_to(model, layer)
        self.model = model
        self.family = family
        self.include_cls = include_cls and has_cls
        self._prefix = 1 if has_cls else 0
        self.processor = processor
        self.image_size = image_size
        self.mean = tuple(float(m) for m in processor.image_mean)
        self.std = tuple(float(s) for s in processor.image_std)
        self.num_tokens, self.embed_dim = token_shape(self, self.image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=pixels).last_hidden_state
        return tokens if self.include_cls else tokens[:, self._prefix :]

    def transform(self, train: bool = False) -> Callable:
        """The model's own image processor (same for training and evaluation)."""
        return _ProcessorTransform(self.processor)


def _keep_up_to(model: nn.Module, layer: int) -> None:
    """Truncates the encoder after ``layer`` and drops the post-norm and pooling head."""
    tower = getattr(model, "vision_model", model)  # transformers 4.x nests the tower
    layers = tower.encoder.layers
    index = layer + len(layers) if layer < 0 else layer
    if not 0 <= index < len(layers):
        raise ValueError(f"layer {layer} is out of range for a {len(layers)}-layer encoder")
    tower.encoder.layers = layers[: index + 1]
    tower.post_layernorm = nn.Identity()
    if getattr(tower, "use_head", False):
        tower.use_head = False
        del tower.head


class _ProcessorTransform:
    """PIL image to ``[3,H,W]`` through a transformers image processor (picklable)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.processor).__name__})"


@ENCODERS.register("hf-clip")
def hf_clip(
    path: str | None = None,
    config: dict[str, Any] | None = None,
    layer: int = -2,
    include_cls: bool = False,
    processor: dict[str, Any] | None = None,
) -> HFVisionEncoder:
    """A transformers ``CLIPVisionModel`` from a local directory or a config dict.

    Args:
        path: local ``save_pretrained`` directory (e.g. a CLIP ViT-L/14-336 snapshot).
        config: ``CLIPVisionConfig`` fields for a randomly initialised tower.
        layer: encoder layer whose output is returned (penultimate by default).
        include_cls: prepend the class token.
        processor: an image-processor config overriding the folder's (see :class:`HFVisionEncoder`).
    """
    return HFVisionEncoder(
        "clip", path=path, config=config, layer=layer, include_cls=include_cls, processor=processor
    )


@ENCODERS.register("hf-siglip")
def hf_siglip(
    path: str | None = None,
    config: dict[str, Any] | None = None,
    layer: int = -2,
    processor: dict[str, Any] | None = None,
) -> HFVisionEncoder:
    """A transformers ``SiglipVisionModel`` from a local directory or a config dict.

    Args:
        path: local ``save_pretrained`` directory (e.g. a SigLIP so400m snapshot).
        config: ``SiglipVisionConfig`` fields for a randomly initialised tower.
        layer: encoder layer whose output is returned (penultimate by default).
        processor: an image-processor config overriding the folder's (see :class:`HFVisionEncoder`).
    """
    return HFVisionEncoder("siglip", path=path, config=config, layer=layer, processor=processor)
