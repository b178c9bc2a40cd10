"""``cnn-tiny``: a small convnet that learns from scratch in minutes on CPU."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from emofer.encoders import ENCODERS
from emofer.encoders._common import IMAGENET_MEAN, IMAGENET_STD, resize_transform, token_shape
from emofer.encoders.base import VisionEncoder


@ENCODERS.register("cnn-tiny")
class TinyCNN(VisionEncoder):
    """A small random convnet (conv stem + stride-2 blocks); tokens are its final feature map.

    Unlike a tiny ViT, it learns quickly from a few thousand small images,
    which makes it the encoder of the CPU demo. Each block halves the
    resolution and widens the channels (doubling up to ``4 * width``); at
    64 px and 4 blocks the output is a 4x4 map, i.e. 16 tokens.

    Args:
        image_size: input resolution (the demo uses 64 px).
        width: channels of the stem; the tokens have ``4 * width`` channels
            when ``num_blocks >= 3``.
        num_blocks: number of stride-2 blocks (each conv-BN-ReLU twice).
    """

    def __init__(self, image_size: int = 64, width: int = 32, num_blocks: int = 4) -> None:
        super().__init__()
        from torchvision.ops import Conv2dNormActivation

        layers: list[nn.Module] = [Conv2dNormActivation(3, width, 3)]
        channels = width
        for i in range(num_blocks):
            out = width * 2 ** min(i, 2)
            layers.append(
                nn.Sequential(
                    Conv2dNormActivation(channels, out, 3, stride=2),
                    Conv2dNormActivation(out, out, 3),
                )
            )
            channels = out
        self.body = nn.Sequential(*layers)
        self.image_size = image_size
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self.num_tokens, self.embed_dim = token_shape(self, image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels).flatten(2).transpose(1, 2)

    def transform(self, train: bool = False) -> Callable:
        """Bicubic resize (plus a horizontal flip in training) and ImageNet statistics."""
        return resize_transform(self.image_size, self.mean, self.std, flip=bool(train))
