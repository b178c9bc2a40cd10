"""Vision encoders: every registered one, built tiny, honours the VisionEncoder contract."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emofer.encoders import ENCODERS, VisionEncoder
from emofer.encoders._common import token_shape

DOCS = Path(__file__).resolve().parents[1] / "docs"

HF_TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
OPENCLIP_TINY = "emofer-test-tiny"
TINY = {
    "openclip": {"model_name": OPENCLIP_TINY},
    "timm": {"model_name": "vit_tiny_patch16_224", "image_size": 32, "model_kwargs": {"depth": 2}},
    "hf-clip": {"config": HF_TINY},
    "hf-siglip": {"config": HF_TINY},
    "vit-tiny": {"image_size": 32, "width": 32, "depth": 2, "heads": 2},
    "cnn-tiny": {"image_size": 32, "width": 8},
    "eva-vit-g": {"image_size": 32, "config": {**HF_TINY, "patch_size": 8, "image_size": 32}},
}
"""Tiny CPU kwargs of every built-in encoder (a new built-in must add itself here or to BIG)."""

BIG = {
    # name: (num_tokens, embed_dim, parameter range) checked on the meta device only
    "openclip-vit-l-14": (256, 1024, (2.8e8, 3.1e8)),
    "openclip-eva01-g-14": (256, 1408, (0.95e9, 1.05e9)),
    "eva-vit-g": (257, 1408, (0.95e9, 1.05e9)),
}


@pytest.fixture(scope="module", autouse=True)
def openclip_tiny_config(tmp_path_factory):
    """Registers a tiny open_clip model config (two-tower, 3-block 32-wide ViT)."""
    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
    }
    path = tmp_path_factory.mktemp("openclip") / f"{OPENCLIP_TINY}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


def builtin_names() -> list[str]:
    return [n for n in ENCODERS.names() if ENCODERS.source(n) == "emofer"]


def photo(width: int = 70, height: int = 50) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_every_builtin_encoder_has_a_tiny_or_meta_test_config():
    assert set(builtin_names()) == set(TINY) | set(BIG)


@pytest.mark.parametrize("name", sorted(TINY))
def test_encoder_contract(name):
    torch.manual_seed(0)
    enc = ENCODERS.build({"name": name, **TINY[name]})
    assert isinstance(enc, VisionEncoder)
    assert len(enc.mean) == 3 and len(enc.std) == 3
    pixels = torch.randn(2, 3, enc.image_size, enc.image_size)

    tokens = enc(pixels)
    assert tokens.shape == (2, enc.num_tokens, enc.embed_dim)
    assert tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()

    tokens.square().mean().backward()
    params = dict(enc.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f"unused parameters: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())

    enc.zero_grad(set_to_none=True)
    assert enc.freeze() is enc and enc.is_frozen and not enc.training
    enc.train()
    assert not enc.training, "a frozen encoder must stay in eval mode"
    frozen = enc(pixels)
    assert not frozen.requires_grad
    assert all(p.grad is None for p in enc.parameters())

    for train in (False, True):
        transform = pickle.loads(pickle.dumps(enc.transform(train)))  # DataLoader workers may pickle it
        image = transform(photo())
        assert image.shape == (3, enc.image_size, enc.image_size)
        assert image.dtype == torch.float32 and torch.isfinite(image).all()


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_presets_on_meta(name):
    tokens, dim, (low, high) = BIG[name]
    with torch.device("meta"):
        enc = ENCODERS.build(name)
    assert (enc.num_tokens, enc.embed_dim, enc.image_size) == (tokens, dim, 224)
    assert low < sum(p.numel() for p in enc.parameters()) < high
    assert enc(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, tokens, dim)
    assert enc.transform(False)(photo()).shape == (3, 224, 224)


def test_eva_g_is_the_llama_vid_tower():
    with torch.device("meta"):
        enc = ENCODERS.build("openclip-eva01-g-14")
    trunk = enc.visual.trunk
    assert trunk.embed_dim == 1408 and trunk.patch_embed.patch_size == (14, 14)
    assert len(trunk.blocks) == 39  # 40 blocks minus the last, as BLIP-2 / LLaMA-VID drop it


def test_openclip_local_checkpoint_layer_and_cls(tmp_path):
    import open_clip

    torch.manual_seed(1)
    ref = open_clip.create_model(OPENCLIP_TINY).eval()
    path = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), path)
    enc = ENCODERS.build({"name": "openclip", "model_name": OPENCLIP_TINY, "pretrained": str(path)}).eval()
    with_cls = ENCODERS.build(
        {"name": "openclip", "model_name": OPENCLIP_TINY, "pretrained": str(path), "include_cls": True}
    ).eval()
    last = ENCODERS.build(
        {"name": "openclip", "model_name": OPENCLIP_TINY, "pretrained": str(path), "layer": -1}
    ).eval()
    assert len(enc.visual.transformer.resblocks) == 2 and enc.visual.proj is None
    assert (enc.num_tokens, with_cls.num_tokens, enc.embed_dim) == (16, 17, 32)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = ref.visual.forward_intermediates(
            x, indices=[-2, -1], intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
        )
        penultimate = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], 1)
        torch.testing.assert_close(enc(x), penultimate[:, 1:])
        torch.testing.assert_close(with_cls(x), penultimate)
        torch.testing.assert_close(last(x), out["image_intermediates"][1])


def test_timm_checkpoint_path_round_trip(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    ref = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32).eval()
    save_file(ref.state_dict(), tmp_path / "vit.safetensors")
    enc = ENCODERS.build(
        {
            "name": "timm",
            "model_name": "vit_tiny_patch16_224",
            "checkpoint_path": str(tmp_path / "vit.safetensors"),
            "model_kwargs": {"depth": 2, "img_size": 32},
            "include_cls": True,
        }
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref.forward_features(x))
    assert enc.image_size == 32 and enc.num_tokens == 5


def test_timm_wrong_checkpoint_fails(tmp_path):
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("vit_tiny_patch16_224", depth=1).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(RuntimeError, match="Missing key"):
        ENCODERS.build(
            {
                "name": "timm",
                "model_name": "vit_tiny_patch16_224",
                "checkpoint_path": str(tmp_path / "w.safetensors"),
                "model_kwargs": {"depth": 2},
            }
        )


def test_timm_convnet_flattens_its_feature_map():
    enc = ENCODERS.build({"name": "timm", "model_name": "resnet10t", "image_size": 64})
    assert (enc.num_tokens, enc.embed_dim) == (4, 512)  # a 2x2 map of 512 channels
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feature_map = enc.model.forward_features(x)
        torch.testing.assert_close(enc(x)[0, 1], feature_map[0, :, 0, 1])  # row-major tokens
    earlier = ENCODERS.build({"name": "timm", "model_name": "resnet10t", "image_size": 64, "layer": -2})
    assert (earlier.num_tokens, earlier.embed_dim) == (16, 256)


def test_timm_intermediate_layer_drops_later_blocks_and_norm():
    enc = ENCODERS.build(
        {
            "name": "timm",
            "model_name": "vit_tiny_patch16_224",
            "image_size": 32,
            "model_kwargs": {"depth": 3},
            "layer": -2,
        }
    )
    assert len(enc.model.blocks) == 2
    assert isinstance(enc.model.norm, torch.nn.Identity)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_hf_local_directory_round_trip(tmp_path, family):
    import transformers

    model_cls = {"clip": transformers.CLIPVisionModel, "siglip": transformers.SiglipVisionModel}[family]
    config_cls = {"clip": transformers.CLIPVisionConfig, "siglip": transformers.SiglipVisionConfig}[family]
    torch.manual_seed(3)
    ref = model_cls(config_cls(**HF_TINY)).eval()
    ref.save_pretrained(tmp_path)
    enc = ENCODERS.build({"name": f"hf-{family}", "path": str(tmp_path)}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = ref(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        prefix = 1 if family == "clip" else 0
        torch.testing.assert_close(enc(x), hidden[:, prefix:])
    assert len(enc.model.encoder.layers) == 2


def test_hf_clip_cls_and_errors(tmp_path):
    enc = ENCODERS.build({"name": "hf-clip", "config": HF_TINY, "include_cls": True})
    assert enc.num_tokens == 17
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        ENCODERS.build({"name": "hf-clip"})
    with pytest.raises(ValueError, match="out of range"):
        ENCODERS.build({"name": "hf-siglip", "config": HF_TINY, "layer": 5})
    enc.model.save_pretrained(tmp_path)  # a truncated tower: its last layer is missing
    with pytest.raises(ValueError, match=r"lacks weights for \['encoder\.layers\.2\."):
        ENCODERS.build({"name": "hf-clip", "path": str(tmp_path)})


def test_tiny_encoder_defaults_fit_the_demo():
    cnn = ENCODERS.build("cnn-tiny")
    vit = ENCODERS.build("vit-tiny")
    assert (cnn.image_size, cnn.num_tokens, cnn.embed_dim) == (64, 16, 128)
    assert (vit.image_size, vit.num_tokens, vit.embed_dim) == (64, 64, 64)


def test_token_probe_leaves_batch_norm_statistics_alone():
    enc = ENCODERS.build({"name": "cnn-tiny", "image_size": 32, "width": 8})
    bn = enc.body[0][1]
    assert enc.training and int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_token_probe_falls_back_to_a_real_forward(caplog):
    class FixedDevice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            offset = torch.ones(4, device="cpu")  # a fixed-device tensor: meta tensors cannot mix with it
            return (self.bn(self.conv(x)).flatten(2).transpose(1, 2) + offset)[:, :-1]

    module = FixedDevice()
    with caplog.at_level("DEBUG", logger="emofer.encoders._common"):
        assert token_shape(module, 32) == (15, 4)
    assert "probing with a real forward" in caplog.text
    assert module.training and module.bn.training and int(module.bn.num_batches_tracked) == 0


def test_register_your_own_encoder_example_from_docs():
    text = (DOCS / "encoders.md").read_text()
    section = text.split("## Register your own encoder", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace: dict = {"__name__": "docs_encoders_example"}
    exec(compile(block, "docs/encoders.md", "exec"), namespace)
    encoder = namespace["encoder"]
    assert "patch-mean" in ENCODERS
    assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, encoder.num_tokens, encoder.embed_dim) == (1, 4, 3)
    assert encoder.transform(True)(photo()).shape == (3, 32, 32)
