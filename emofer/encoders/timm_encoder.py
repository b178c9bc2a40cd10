"""timm backbones as token encoders, and the random ``vit-tiny``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from emofer.encoders import ENCODERS
from emofer.encoders._common import resize_transform, token_shape
from emofer.encoders.base import VisionEncoder


@ENCODERS.register("timm")
class TimmEncoder(VisionEncoder):
    """Any timm model: tokens from ``forward_features`` (convnet maps flattened to tokens).

    Args:
        model_name: a timm model name (``timm.list_models()``).
        pretrained: load timm's default pretrained weights (from its hub
            cache; downloads if absent).
        checkpoint_path: a local timm-format state dict (``.safetensors`` or
            ``.pth``) loaded strictly into the model as created, classifier
            included (pass ``model_kwargs={"num_classes": 0}`` for a headless
            file).
        image_size: input resolution; models with ``set_input_size`` (ViTs,
            EVA, Swin) resize their position embeddings to it, others only
            change the transform.
        layer: None for the final features (after the final norm), or the index
            of a block/stage as in timm's ``forward_intermediates`` (``-2`` the
            penultimate block, no final norm); later blocks are removed.
        include_cls: keep the prefix (class, register) tokens of transformers.
        model_kwargs: extra keyword arguments for ``timm.create_model``
            (e.g. ``{"depth": 2}`` for a tiny test model).

    Example:
        >>> enc = ENCODERS.build({"name": "timm", "model_name": "resnet18"})  # doctest: +SKIP
        >>> enc(torch.randn(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 49, 512])
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        image_size: int | None = None,
        layer: int | None = None,
        include_cls: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        model = timm.create_model(model_name, pretrained=pretrained, **(model_kwargs or {}))
        if checkpoint_path:
            timm.models.load_checkpoint(model, checkpoint_path, strict=True)
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(
                1 if layer is None else [layer], prune_norm=layer is not None, prune_head=True
            )
        else:
            model.reset_classifier(0, "")
        if image_size is None:  # a transformer built for another size (img_size in model_kwargs)
            built = getattr(getattr(model, "patch_embed", None), "img_size", None)
            image_size = int(built[0]) if built is not None else None
        if image_size is not None and hasattr(model, "set_input_size"):
            model.set_input_size(img_size=image_size)
        data_cfg = timm.data.resolve_model_data_config(model)
        if image_size is not None:
            data_cfg["input_size"] = (3, image_size, image_size)
        self.model = model
        self.model_name = model_name
        self.include_cls = include_cls
        self.data_config = data_cfg
        self.image_size = int(data_cfg["input_size"][-1])
        self.mean = tuple(float(m) for m in data_cfg["mean"])
        self.std = tuple(float(s) for s in data_cfg["std"])
        self.num_tokens, self.embed_dim = token_shape(self, self.image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(pixels)
        if feats.dim() == 4:  # a feature map: flatten the grid into tokens
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                return feats.flatten(1, 2)
            return feats.flatten(2).transpose(1, 2)
        prefix = getattr(self.model, "num_prefix_tokens", 0)
        return feats if self.include_cls else feats[:, prefix:]

    def transform(self, train: bool = False) -> Callable:
        """timm's own preprocessing for these weights (``create_transform``; train adds its augmentation)."""
        import timm

        return timm.data.create_transform(**self.data_config, is_training=bool(train))


@ENCODERS.register("vit-tiny")
class TinyViT(TimmEncoder):
    """A small random ViT (timm) for tests and demos; no pretrained weights.

    Args:
        image_size: input resolution (the demo uses 64 px).
        patch_size: patch size; tokens = ``(image_size / patch_size) ** 2``.
        width: embedding width.
        depth: number of transformer blocks.
        heads: attention heads.
        include_cls: prepend the class token.
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        include_cls: bool = False,
    ) -> None:
        super().__init__(
            "vit_tiny_patch16_224",
            image_size=image_size,
            include_cls=include_cls,
            model_kwargs={
                "img_size": image_size,
                "patch_size": patch_size,
                "embed_dim": width,
                "depth": depth,
                "num_heads": heads,
            },
        )

    def transform(self, train: bool = False) -> Callable:
        """Bicubic resize (plus a horizontal flip in training): random weights define no preprocessing."""
        return resize_transform(self.image_size, self.mean, self.std, flip=bool(train))
