"""Face priors: the FacePrior contract, and FaceXFormer's checkpoint-exact structure."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from emofer.contracts import ATTRIBUTE_LABELS, landmarks_to_pixels, pixels_to_landmarks
from emofer.encoders import FACE_PRIORS, FacePrior, FacePriorOutput
from emofer.encoders._two_way import Attention, PositionEmbeddingRandom
from emofer.encoders.facexformer import FaceXFormer, landmark_features

REFERENCE = Path(__file__).parent / "data" / "facexformer_reference.json"
TINY = {"facexformer-tiny": {}, "facexformer": None, "none": None}
"""Tiny CPU kwargs per built-in prior; None: covered by its own test (meta or no module)."""
OUTPUT_SHAPES = {
    "landmarks": (68, 2),
    "headpose": (3,),
    "attributes": (40,),
    "visibility": (29,),
    "age": (8,),
    "gender": (2,),
    "race": (5,),
}


def photo(width: int = 90, height: int = 70) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def randomised(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict with every float tensor perturbed (norms and biases non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def tiny() -> FaceXFormer:
    torch.manual_seed(0)
    return FACE_PRIORS.build("facexformer-tiny")


def test_every_builtin_prior_is_covered():
    builtin = {n for n in FACE_PRIORS.names() if FACE_PRIORS.source(n) == "emofer"}
    assert builtin == set(TINY)


def test_none_builds_no_prior():
    assert FACE_PRIORS.build("none") is None
    assert FACE_PRIORS.build({"name": "none"}) is None


@pytest.mark.parametrize("name", [n for n, kw in TINY.items() if kw is not None])
def test_prior_contract(name):
    torch.manual_seed(0)
    prior = FACE_PRIORS.build({"name": name, **TINY[name]})
    assert isinstance(prior, FacePrior)
    pixels = torch.randn(2, 3, prior.image_size, prior.image_size)

    out = prior(pixels)
    assert isinstance(out, FacePriorOutput)
    assert out.global_feat.shape == (2, prior.global_dim)
    assert out.local_feat.shape == (2, prior.num_local, prior.local_dim)
    assert out.landmarks.shape == (2, prior.num_local, 2)
    assert out.task_tokens.shape == (2, prior.num_task_tokens, prior.task_token_dim)
    assert set(out.attributes) == set(prior.attribute_labels)
    for key, labels in prior.attribute_labels.items():
        assert out.attributes[key].shape == (2, len(labels))
    tensors = [out.global_feat, out.local_feat, out.landmarks, out.task_tokens, *out.attributes.values()]
    assert all(torch.isfinite(t).all() for t in tensors)

    loss = sum(t.square().mean() for t in tensors)
    loss.backward()
    grads = {n: p.grad for n, p in prior.named_parameters()}
    for used in (
        "backbone.0.0.0.weight",
        "linear_fuse.weight",
        "face_decoder.age_prediction_head.layers.2.weight",
    ):
        assert grads[used] is not None and grads[used].abs().sum() > 0, used
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)

    prior.zero_grad(set_to_none=True)
    prior.freeze()
    prior.train()
    assert not prior.training
    frozen = prior(pixels)
    assert not frozen.global_feat.requires_grad and not frozen.local_feat.requires_grad
    assert all(p.grad is None for p in prior.parameters())

    for train in (False, True):
        image = pickle.loads(pickle.dumps(prior.transform(train)))(photo())
        assert image.shape == (3, prior.image_size, prior.image_size)


def test_tiny_forward_all_shapes_and_configurable_size(tiny):
    out = tiny.forward_all(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in out.items() if k != "parsing"} == OUTPUT_SHAPES
    assert out["parsing"].shape == (2, 11, 64, 64)
    bigger = FACE_PRIORS.build({"name": "facexformer-tiny", "image_size": 96})
    assert bigger.forward_all(torch.randn(1, 3, 96, 96))["parsing"].shape == (1, 11, 96, 96)
    assert bigger.transform(False)(photo()).shape == (3, 96, 96)


def test_forward_and_forward_all_agree(tiny):
    tiny.eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        heads = tiny.forward_all(pixels)
        priors = tiny(pixels)
        _, fused = tiny.encode(pixels)
    torch.testing.assert_close(priors.landmarks, heads["landmarks"])
    for key in ("age", "gender", "race"):
        torch.testing.assert_close(priors.attributes[key], heads[key])
    torch.testing.assert_close(priors.local_feat, landmark_features(fused, heads["landmarks"]))


def test_landmark_features_use_align_corners_false():
    fmap = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    # the centre of pixel (row 2, col 3) of a 4x5 map, and the top-left corner pixel
    centre = torch.tensor([[(2 * 3 + 1) / 5 - 1, (2 * 2 + 1) / 4 - 1], [-1 + 1 / 5, -1 + 1 / 4]])
    feats = landmark_features(fmap, centre.expand(2, -1, -1))
    assert feats.shape == (2, 2, 3)
    torch.testing.assert_close(feats[:, 0], fmap[:, :, 2, 3])
    torch.testing.assert_close(feats[:, 1], fmap[:, :, 0, 0])
    outside = landmark_features(fmap, torch.full((2, 1, 2), 3.0))  # far outside: nearest border value
    torch.testing.assert_close(outside[:, 0], fmap[:, :, 3, 4])


def test_landmark_pixel_conversions():
    fmap = torch.randn(1, 3, 4, 5)
    pixel = torch.tensor([[[3.0, 2.0]]])  # x=3, y=2: the centre of fmap[..., 2, 3]
    points = pixels_to_landmarks(pixel, width=5, height=4)
    torch.testing.assert_close(landmark_features(fmap, points)[0, 0], fmap[0, :, 2, 3])
    torch.testing.assert_close(landmarks_to_pixels(points, 5, 4), pixel)
    corners = landmarks_to_pixels(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), width=224, height=112)
    torch.testing.assert_close(corners, torch.tensor([[-0.5, -0.5], [223.5, 111.5]]))


def test_fusion_concatenates_stages_deepest_first(tiny):
    tiny.eval()
    d = tiny.local_dim
    with torch.no_grad():
        weight = torch.zeros_like(tiny.linear_fuse.weight)
        weight[:, :d, 0, 0] = torch.eye(d)  # pass the first block of channels through unchanged
        original = tiny.linear_fuse.weight.clone()
        tiny.linear_fuse.weight.copy_(weight)
        try:
            pixels = torch.randn(1, 3, 64, 64)
            _, fused = tiny.encode(pixels)
            x, stages = pixels, []
            for i, layer in enumerate(tiny.backbone[0]):
                x = layer(x)
                if i in (1, 3, 5, 7):
                    stages.append(x)
            deepest = tiny.linear_c[3].proj(stages[3]).permute(0, 3, 1, 2)
            expected = F.interpolate(deepest, size=stages[0].shape[1:3], mode="bilinear", align_corners=False)
            torch.testing.assert_close(fused, expected)
        finally:
            tiny.linear_fuse.weight.copy_(original)


def test_attention_matches_the_softmax_formula():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, downsample_rate=2)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    heads = [t.view(2, -1, 2, 4).transpose(1, 2) for t in (attn.q_proj(q), attn.k_proj(k), attn.v_proj(v))]
    weights = torch.softmax(heads[0] @ heads[1].transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.out_proj((weights @ heads[2]).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(q, k, v), expected)


def test_random_position_encoding_formula():
    pe = PositionEmbeddingRandom(4)
    out = pe((3, 2))
    assert out.shape == (8, 3, 2)
    row, col = 2, 1
    x, y = (col + 0.5) / 2, (row + 0.5) / 3
    angles = 2 * math.pi * (torch.tensor([2 * x - 1, 2 * y - 1]) @ pe.positional_encoding_gaussian_matrix)
    torch.testing.assert_close(out[:, row, col], torch.cat([angles.sin(), angles.cos()]))


def test_frozen_prior_is_deterministic_under_train():
    prior = FACE_PRIORS.build({"name": "facexformer-tiny"})
    for stage in prior.backbone[0]:
        for module in stage.modules():
            if hasattr(module, "stochastic_depth"):
                module.stochastic_depth.p = 0.5  # as swin_b: random in train mode
    prior.freeze()
    torch.nn.Sequential(prior).train()  # a parent switching to train mode
    pixels = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(prior(pixels).global_feat, prior(pixels).global_feat)


def test_full_facexformer_structure_on_meta():
    import torchvision

    with torch.device("meta"):
        model = FACE_PRIORS.build("facexformer")
        swin = torchvision.models.swin_b(weights=None)
    state = model.state_dict()
    assert len(state) == 505
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 92e6) / 92e6 < 0.01, params
    reference = torch.nn.Sequential(*list(swin.children())[:-1]).state_dict()
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    assert list(backbone) == list(reference)
    assert all(backbone[k].shape == reference[k].shape for k in reference)
    assert sum("relative_position_index" in k for k in state) == 24
    expected_shapes = {
        "pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        "linear_fuse.weight": (256, 1024, 1, 1),
        "linear_c.0.proj.weight": (256, 128),
        "linear_c.3.proj.weight": (256, 1024),
        "face_decoder.mask_tokens.weight": (11, 256),
        "face_decoder.race_token.weight": (1, 256),
        "face_decoder.landmarks_prediction_head.layers.2.weight": (136, 256),
        "face_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
        "face_decoder.output_upscaling.1.weight": (64,),
        "face_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
        "face_decoder.output_hypernetwork_mlps.layers.2.weight": (32, 256),
        "face_decoder.transformer.layers.1.cross_attn_token_to_image.q_proj.weight": (128, 256),
        "face_decoder.transformer.layers.0.self_attn.q_proj.weight": (256, 256),
        "face_decoder.transformer.layers.0.mlp.lin1.weight": (2048, 256),
        "face_decoder.transformer.final_attn_token_to_image.out_proj.weight": (256, 128),
        "face_decoder.transformer.norm_final_attn.weight": (256,),
    }
    assert {k: tuple(state[k].shape) for k in expected_shapes} == expected_shapes
    assert "linear_fuse.bias" not in state and not any(k.startswith("linear_fuse.1") for k in state)
    assert (model.global_dim, model.local_dim, model.num_local, model.image_size) == (1024, 256, 68, 224)
    assert (model.num_task_tokens, model.task_token_dim) == (7, 256)
    assert model.attribute_labels == ATTRIBUTE_LABELS


def test_full_facexformer_outputs_on_meta():
    with torch.device("meta"):
        model = FACE_PRIORS.build("facexformer")
        heads = model.forward_all(torch.empty(2, 3, 224, 224))
        priors = model(torch.empty(2, 3, 224, 224))
    assert {k: tuple(v.shape[1:]) for k, v in heads.items() if k != "parsing"} == OUTPUT_SHAPES
    assert heads["parsing"].shape == (2, 11, 224, 224)
    assert priors.global_feat.shape == (2, 1024) and priors.local_feat.shape == (2, 68, 256)
    assert priors.task_tokens.shape == (2, 7, 256)


def seeded_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic weights for every float entry (one generator over the sorted keys).

    Shared with the script that produced ``data/facexformer_reference.json``.
    """
    gen = torch.Generator().manual_seed(20240501)
    out = {}
    for key in sorted(state):
        value = state[key]
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=gen)
        if value.dim() == 1:
            out[key] = (1.0 if key.endswith("weight") else 0.0) + 0.1 * noise
        elif key.endswith("positional_encoding_gaussian_matrix"):
            out[key] = noise
        else:
            out[key] = 0.02 * noise
    return out


def reference_input() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))


def test_full_facexformer_official_checkpoint_matches_the_official_model(tmp_path):
    """Loads seeded weights in the official format and reproduces the official code's outputs.

    ``data/facexformer_reference.json`` holds the outputs of the official
    implementation (Kartik-3004/facexformer at d4a268b, ``FaceXFormer.forward``
    with one task id per copy of the input) on the same seeded weights and input.
    """
    reference = json.loads(REFERENCE.read_text())
    model = FACE_PRIORS.build("facexformer").eval()
    state = seeded_state(model.state_dict())
    path = tmp_path / "model.pt"
    torch.save({"state_dict_backbone": state, "epoch": 7}, path)
    model.load_checkpoint(path)
    loaded = model.state_dict()
    assert len(loaded) == 505 and all(torch.equal(loaded[k], v) for k, v in state.items())
    with torch.no_grad():
        out = model.forward_all(reference_input())
    assert out["parsing"].shape == (1, 11, 224, 224)
    for key in ("landmarks", "headpose", "attributes", "visibility", "age", "gender", "race"):
        expected = torch.tensor(reference[key]).view(out[key][0].shape)
        torch.testing.assert_close(out[key][0], expected, atol=1e-4, rtol=0, msg=key)
    parsing = torch.tensor(reference["parsing_subsampled"]).view(11, 14, 14)
    torch.testing.assert_close(out["parsing"][0, :, ::16, ::16], parsing, atol=1e-4, rtol=0)
    assert abs(out["parsing"].mean().item() - reference["parsing_mean"]) < 1e-5


def test_tiny_checkpoint_round_trip_both_formats(tmp_path, tiny):
    from safetensors.torch import save_file

    state = randomised(tiny, 2)
    torch.save({"state_dict_backbone": state}, tmp_path / "tiny.pt")
    save_file(state, tmp_path / "tiny.safetensors")
    pixels = torch.randn(2, 3, 64, 64)
    outputs = []
    for name in ("tiny.pt", "tiny.safetensors"):
        prior = FACE_PRIORS.build({"name": "facexformer-tiny", "checkpoint": str(tmp_path / name)}).eval()
        with torch.no_grad():
            outputs.append(prior.forward_all(pixels))
    reference = FACE_PRIORS.build("facexformer-tiny")
    reference.load_state_dict(state, strict=True)
    with torch.no_grad():
        expected = reference.eval().forward_all(pixels)
    for out in outputs:
        for key in expected:
            assert torch.equal(out[key], expected[key]), key


def test_wrong_or_missing_keys_are_listed(tmp_path, tiny):
    state = randomised(tiny, 3)
    state["face_decoder.smile_token.weight"] = state.pop("face_decoder.race_token.weight")
    del state["linear_fuse.weight"]
    path = tmp_path / "bad.pt"
    torch.save({"state_dict_backbone": state}, path)
    with pytest.raises(RuntimeError) as err:
        tiny.load_checkpoint(path)
    message = str(err.value)
    assert "missing keys ['face_decoder.race_token.weight', 'linear_fuse.weight']" in message
    assert "unexpected keys ['face_decoder.smile_token.weight']" in message


def test_not_an_official_checkpoint_and_shape_mismatch(tmp_path):
    tiny = FACE_PRIORS.build("facexformer-tiny")
    torch.save(tiny.state_dict(), tmp_path / "flat.pt")
    with pytest.raises(
        RuntimeError, match="not an official FaceXFormer checkpoint: no 'state_dict_backbone'"
    ):
        tiny.load_checkpoint(tmp_path / "flat.pt")
    wide = FACE_PRIORS.build({"name": "facexformer-tiny", "decoder_dim": 64})
    torch.save({"state_dict_backbone": wide.state_dict()}, tmp_path / "wide.pt")
    with pytest.raises(RuntimeError, match="size mismatch for linear_fuse.weight"):
        tiny.load_checkpoint(tmp_path / "wide.pt")
