"""Helpers shared by the encoder and face-prior modules."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def token_shape(encoder: nn.Module, image_size: int) -> tuple[int, int]:
    """``(num_tokens, embed_dim)`` of ``encoder`` on one ``image_size`` image.

    The forward runs on meta tensors (shapes only, no compute, no change to
    batch-norm statistics), so a 1B-parameter tower costs nothing to probe.
    A module whose forward cannot run on meta tensors (it makes tensors on a
    fixed device) is probed with one real forward in eval mode instead.
    """
    first = next(itertools.chain(encoder.parameters(), encoder.buffers()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(encoder.named_parameters(), encoder.named_buffers())
    }
    pixels = torch.empty(1, 3, image_size, image_size, dtype=dtype, device="meta")
    try:
        out = torch.func.functional_call(encoder, meta, (pixels,))
    except (RuntimeError, NotImplementedError) as err:
        log.debug("meta probe of %s failed (%s); probing with a real forward", type(encoder).__name__, err)
        out = _real_probe(encoder, pixels.shape, dtype, first.device if first is not None else None)
    if out.dim() != 3:
        raise ValueError(f"{type(encoder).__name__} must return tokens [B,N,D]; got shape {tuple(out.shape)}")
    return int(out.shape[1]), int(out.shape[2])


def _real_probe(
    encoder: nn.Module, shape: torch.Size, dtype: torch.dtype, device: torch.device | None
) -> torch.Tensor:
    modes = {m: m.training for m in encoder.modules()}
    encoder.eval()
    try:
        with torch.no_grad():
            return encoder(torch.zeros(shape, dtype=dtype, device=device))
    finally:
        for module, training in modes.items():
            module.training = training


class Preprocess:
    """A PIL-to-tensor transform in two parts: ``fixed`` (deterministic) then ``random`` (augmentation).

    ``transform(image) == random(fixed(image))``. The split lets the data
    pipeline keep ``fixed(image)`` of a face it sees every epoch and draw
    only the augmentation anew (``emofer.data.pipeline.SampleProcessor``).

    Args:
        fixed: the deterministic steps (e.g. resize, to tensor, normalise).
        random: the random steps on the tensor ``fixed`` returns, or None.
    """

    def __init__(self, fixed: Callable, random: Callable | None = None) -> None:
        self.fixed = fixed
        self.random = random

    def __call__(self, image):
        out = self.fixed(image)
        return out if self.random is None else self.random(out)

    def __repr__(self) -> str:
        return f"Preprocess(fixed={self.fixed!r}, random={self.random!r})"


def resize_transform(
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    flip: bool = False,
) -> Preprocess:
    """PIL image to a normalised ``[3,S,S]`` tensor: bicubic resize, optional flip.

    The preprocessing of models whose weights define no other (random tiny
    encoders) and of FaceXFormer (224 bicubic + ImageNet statistics). The
    flip runs on the normalised tensor (the same numbers as flipping the
    resized image: a flip commutes with the per-pixel steps), as the
    :class:`Preprocess`'s random part.
    """
    from torchvision import transforms as T

    fixed = T.Compose([
        T.Lambda(_to_rgb),
        T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    return Preprocess(fixed, T.RandomHorizontalFlip() if flip else None)


def _to_rgb(image):  # module level so the transform pickles into DataLoader workers
    return image.convert("RGB")
