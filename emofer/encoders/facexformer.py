"""FaceXFormer (Narayan et al., 2024) as a face prior, loadable from the official checkpoint.

Module and parameter names mirror the official model
(Kartik-3004/facexformer), so its ``state_dict_backbone`` (505 entries)
loads with ``strict=True`` and gives the same numbers; docs/encoders.md ("Face priors",
"The official checkpoint") describes the model and how the checkpoint loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emofer.contracts import ATTRIBUTE_LABELS, FacePriorOutput
from emofer.encoders import FACE_PRIORS
from emofer.encoders._common import IMAGENET_MEAN, IMAGENET_STD, resize_transform
from emofer.encoders._two_way import MLP, PositionEmbeddingRandom, TwoWayTransformer
from emofer.encoders.base import FacePrior

log = logging.getLogger(__name__)

TASKS = ("landmarks", "pose", "attribute", "visibility", "age", "gender", "race")
"""The decoder's task tokens, in the official order (``{task}_token``, ``{task}_prediction_head``)."""
HEAD_SIZES = {
    "landmarks": 136,
    "pose": 3,
    "attribute": 40,
    "visibility": 29,
    "age": 8,
    "gender": 2,
    "race": 5,
}
OUTPUT_NAMES = {"pose": "headpose", "attribute": "attributes"}
"""Keys of :meth:`FaceXFormer.forward_all` that differ from the task name."""
NUM_LANDMARKS = 68
NUM_PARSING_CLASSES = 11


class FaceDecoder(nn.Module):
    """Task tokens and mask tokens through a two-way transformer, then the task heads.

    Args:
        transformer_dim: token width.
        transformer: a :class:`TwoWayTransformer` of that width.
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer) -> None:
        super().__init__()
        self.transformer = transformer
        for task in TASKS:
            setattr(self, f"{task}_token", nn.Embedding(1, transformer_dim))
        self.mask_tokens = nn.Embedding(NUM_PARSING_CLASSES, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            _layer_norm_2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetwork_mlps = MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
        for task in TASKS:
            head = MLP(transformer_dim, transformer_dim, HEAD_SIZES[task], 3)
            setattr(self, f"{task}_prediction_head", head)

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``[B,C,H,W]`` and PE ``[1,C,H,W]`` to ``(tokens [B,18,C], image [B,HW,C])``."""
        weights = [getattr(self, f"{task}_token").weight for task in TASKS] + [self.mask_tokens.weight]
        tokens = torch.cat(weights, dim=0).unsqueeze(0).expand(image_embeddings.shape[0], -1, -1)
        return self.transformer(image_embeddings, image_pe, tokens)

    def predict(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The seven task heads on their tokens, keyed as in :meth:`FaceXFormer.forward_all`."""
        out = {}
        for i, task in enumerate(TASKS):
            out[OUTPUT_NAMES.get(task, task)] = getattr(self, f"{task}_prediction_head")(tokens[:, i])
        out["landmarks"] = out["landmarks"].view(-1, NUM_LANDMARKS, 2)
        return out

    def parse(self, tokens: torch.Tensor, image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Parsing logits ``[B,11,4H,4W]``: mask-token hypernetworks dotted with the upscaled image."""
        b, _, c = image.shape
        upscaled = self.output_upscaling(image.transpose(1, 2).reshape(b, c, *size))
        hyper = self.output_hypernetwork_mlps(tokens[:, len(TASKS) :])
        b, c, h, w = upscaled.shape
        return (hyper @ upscaled.view(b, c, h * w)).view(b, -1, h, w)


class _StageProjection(nn.Module):
    """One ``linear_c`` entry: a channels-last stage map projected to the decoder width."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, output_dim)

    def forward(self, stage: torch.Tensor) -> torch.Tensor:
        return self.proj(stage).permute(0, 3, 1, 2)  # [B,H,W,C] -> [B,D,H,W]


class FaceXFormer(FacePrior):
    """FaceXFormer: Swin backbone, multi-scale fusion and a two-way task-token decoder.

    Predicts 68 landmarks, head pose, 40 attributes, 29 visibility flags,
    age (8 bins), gender (2), race (5) and an 11-class face parsing in one
    pass. As a face prior, ``global_feat`` is the pooled backbone output,
    ``local_feat`` the fused feature map sampled at the predicted landmarks,
    ``task_tokens`` the decoder's seven task tokens.

    Args:
        image_size: input resolution (224 for the official weights).
        embed_dim: Swin stem width; stage widths are ``embed_dim * (1, 2, 4, 8)``.
        depths: Swin blocks per stage.
        num_heads: Swin attention heads per stage.
        window_size: Swin window size.
        stochastic_depth_prob: Swin stochastic depth (torchvision's ``swin_b`` uses 0.5).
        decoder_dim: width of the fused map and the decoder tokens.
        decoder_heads: attention heads of the decoder.
        decoder_mlp_dim: hidden width of the decoder MLPs.
        decoder_depth: two-way blocks.
        checkpoint: weights to load (see :meth:`load_checkpoint`).
        detect_faces: crop the largest Haar-cascade face (box enlarged by 50%)
            in :meth:`transform` before resizing, for images that are not
            face crops already.
    """

    def __init__(
        self,
        image_size: int = 224,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 7,
        stochastic_depth_prob: float = 0.5,
        decoder_dim: int = 256,
        decoder_heads: int = 8,
        decoder_mlp_dim: int = 2048,
        decoder_depth: int = 2,
        checkpoint: str | None = None,
        detect_faces: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models.swin_transformer import SwinTransformer

        swin = SwinTransformer(
            patch_size=[4, 4],
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=[window_size, window_size],
            stochastic_depth_prob=stochastic_depth_prob,
        )
        # features, norm, Permute, AdaptiveAvgPool2d, Flatten (the classifier head dropped)
        self.backbone = nn.Sequential(*list(swin.children())[:-1])
        self.pe_layer = PositionEmbeddingRandom(decoder_dim // 2)
        self.face_decoder = FaceDecoder(
            decoder_dim,
            TwoWayTransformer(decoder_depth, decoder_dim, decoder_heads, decoder_mlp_dim),
        )
        widths = [embed_dim * 2**i for i in range(4)]
        self.linear_c = nn.ModuleList(_StageProjection(c, decoder_dim) for c in widths)
        self.linear_fuse = nn.Conv2d(decoder_dim * 4, decoder_dim, kernel_size=1, bias=False)

        self.image_size = image_size
        self.global_dim = widths[-1]
        self.local_dim = decoder_dim
        self.num_local = NUM_LANDMARKS
        self.num_task_tokens = len(TASKS)
        self.task_token_dim = decoder_dim
        self.attribute_labels = {k: list(v) for k, v in ATTRIBUTE_LABELS.items()}
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self.detect_faces = detect_faces
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels to ``(pooled backbone [B,8*embed_dim], fused_states [B,D,H/4,W/4])``."""
        features, head = self.backbone[0], self.backbone[1:]
        x, stages = pixels, []
        for i, layer in enumerate(features):
            x = layer(x)
            if i % 2 == 1:  # the outputs of the four Swin stages (1, 3, 5, 7), before patch merging
                stages.append(x)
        pooled = head(x)
        size = stages[0].shape[1:3]
        maps = [
            F.interpolate(proj(stage), size=size, mode="bilinear", align_corners=False)
            for proj, stage in zip(self.linear_c, stages, strict=True)
        ]
        fused = self.linear_fuse(torch.cat(maps[::-1], dim=1))  # deepest stage first
        return pooled, fused

    def decode(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused map to ``(decoder tokens [B,18,D], decoded image tokens [B,HW,D])``."""
        image_pe = self.pe_layer(fused.shape[2:]).unsqueeze(0)
        return self.face_decoder(fused, image_pe)

    def forward_all(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head at once, as the official model computes them in its single decoder pass.

        Returns:
            ``landmarks [B,68,2]`` (x, y in ``[-1,1]``, the ``grid_sample``
            convention with ``align_corners=False``), ``headpose [B,3]``
            (pitch, yaw, roll in radians), ``attributes [B,40]``,
            ``visibility [B,29]`` (logits), ``age [B,8]``, ``gender [B,2]``,
            ``race [B,5]`` (logits) and ``parsing [B,11,S,S]`` (logits).
        """
        _, fused = self.encode(pixels)
        tokens, image = self.decode(fused)
        out = self.face_decoder.predict(tokens)
        out["parsing"] = self.face_decoder.parse(tokens, image, fused.shape[2:])
        return out

    def forward(self, pixels: torch.Tensor) -> FacePriorOutput:
        pooled, fused = self.encode(pixels)
        tokens, _ = self.decode(fused)
        heads = self.face_decoder.predict(tokens)
        landmarks = heads["landmarks"]
        return FacePriorOutput(
            global_feat=pooled,
            local_feat=landmark_features(fused, landmarks),
            landmarks=landmarks,
            attributes={k: heads[k] for k in self.attribute_labels},
            task_tokens=tokens[:, : len(TASKS)],
        )

    def transform(self, train: bool = False) -> Callable:
        """FaceXFormer's input pipeline: (face crop,) bicubic resize, ImageNet statistics; no augmentation."""
        resize = resize_transform(self.image_size, self.mean, self.std)
        if not self.detect_faces:
            return resize
        from torchvision.transforms import Compose

        from emofer.face_detect import FaceCropper

        return Compose([FaceCropper(), resize])

    def load_checkpoint(self, path: str | Path) -> None:
        """Loads weights strictly: an official ``.pt``/``.pth`` file or a ``.safetensors`` state dict.

        The official file is ``{"state_dict_backbone": state_dict, ...}``; a
        ``.safetensors`` file holds the same state dict flat.

        Raises:
            RuntimeError: listing every missing and unexpected key (and, from
                PyTorch, any shape mismatch).
        """
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or "state_dict_backbone" not in saved:
                keys = sorted(saved)[:10] if isinstance(saved, dict) else type(saved).__name__
                raise RuntimeError(
                    f"{path} is not an official FaceXFormer checkpoint: no 'state_dict_backbone' (has {keys})"
                )
            state = saved["state_dict_backbone"]
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise RuntimeError(
                f"{path} does not fit this FaceXFormer ({len(state)} entries, expected {len(expected)}): "
                f"missing keys {missing}; unexpected keys {unexpected}"
            )
        self.load_state_dict(state, strict=True)
        log.info("loaded FaceXFormer weights from %s", path)


def landmark_features(feature_map: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Bilinear samples ``[B,L,C]`` of ``feature_map [B,C,H,W]`` at ``landmarks [B,L,2]``.

    Landmarks are (x, y) in ``[-1,1]`` with ``align_corners=False``: -1 and 1
    are the outer edges of the border pixels, as FaceXFormer predicts them.
    Points outside take the nearest border value.
    """
    grid = landmarks.unsqueeze(2).to(feature_map.dtype)  # [B,L,1,2]
    samples = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return samples.squeeze(3).transpose(1, 2)


def _layer_norm_2d(channels: int) -> nn.Module:
    from timm.layers import LayerNorm2d

    return LayerNorm2d(channels, eps=1e-6)


@FACE_PRIORS.register("facexformer")
def facexformer(checkpoint: str | None = None, detect_faces: bool = False) -> FaceXFormer:
    """FaceXFormer (Swin-B + two-way decoder, ~92M parameters): landmarks, pose, attributes, age/gender/race.

    Args:
        checkpoint: the official checkpoint (``ckpts/model.pt`` from the
            FaceXFormer release) or a ``.safetensors`` copy of its state dict;
            None for random weights.
        detect_faces: crop the largest detected face in the transform (for
            images that are not face crops already).
    """
    return FaceXFormer(checkpoint=checkpoint, detect_faces=detect_faces)


@FACE_PRIORS.register("facexformer-tiny")
def facexformer_tiny(
    image_size: int = 64,
    embed_dim: int = 16,
    depths: Sequence[int] = (1, 1, 1, 1),
    num_heads: Sequence[int] = (1, 2, 4, 8),
    window_size: int = 4,
    decoder_dim: int = 32,
    decoder_heads: int = 2,
    decoder_mlp_dim: int = 64,
    checkpoint: str | None = None,
    detect_faces: bool = False,
) -> FaceXFormer:
    """A small FaceXFormer (same code path, tiny Swin and decoder) for tests and the CPU demo.

    Args:
        image_size: input resolution (the demo uses 64 px).
        embed_dim: Swin stem width (stages ``embed_dim * (1, 2, 4, 8)``).
        depths: Swin blocks per stage.
        num_heads: Swin heads per stage.
        window_size: Swin window size.
        decoder_dim: width of the fused map, decoder tokens and local features.
        decoder_heads: decoder attention heads.
        decoder_mlp_dim: decoder MLP width.
        checkpoint: weights saved from a model of the same dims.
        detect_faces: crop the largest detected face in the transform.
    """
    return FaceXFormer(
        image_size=image_size,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        stochastic_depth_prob=0.0,
        decoder_dim=decoder_dim,
        decoder_heads=decoder_heads,
        decoder_mlp_dim=decoder_mlp_dim,
        checkpoint=checkpoint,
        detect_faces=detect_faces,
    )
