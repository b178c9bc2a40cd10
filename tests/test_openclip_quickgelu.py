"""open_clip files run with the activation they were trained with (QuickGELU for OpenAI's CLIP)."""

from __future__ import annotations

import json
import logging

import torch

from emofer.encoders import ENCODERS
from emofer.encoders.openclip import quick_gelu_for
from tests.test_encoders import OPENCLIP_TINY, openclip_tiny_config  # noqa: F401  (registers the tiny config)


def _quick_reference(tmp_path, name: str):
    import open_clip

    torch.manual_seed(3)
    ref = open_clip.create_model(OPENCLIP_TINY, force_quick_gelu=True).eval()
    path = tmp_path / name
    torch.save(ref.state_dict(), path)
    return ref, path


def _tokens(ref, x):
    out = ref.visual.forward_intermediates(x, indices=[-2], intermediates_only=True, output_fmt="NLC")
    return out["image_intermediates"][0]


def test_a_file_with_an_open_clip_config_saying_quick_gelu_runs_with_it(tmp_path):
    ref, path = _quick_reference(tmp_path, "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    enc = ENCODERS.build({"name": "openclip", "model_name": OPENCLIP_TINY, "pretrained": str(path)}).eval()
    plain = ENCODERS.build(
        {"name": "openclip", "model_name": OPENCLIP_TINY, "pretrained": str(path), "quick_gelu": False}
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _tokens(ref, x))
        assert (plain(x) - _tokens(ref, x)).abs().max() > 1e-4  # the wrong activation is measurably off


def test_an_openai_named_file_gets_quick_gelu(tmp_path):
    ref, path = _quick_reference(tmp_path, "ViT-L-14-openai.pt")
    assert quick_gelu_for(OPENCLIP_TINY, str(path)) is True
    enc = ENCODERS.build({"name": "openclip", "model_name": OPENCLIP_TINY, "pretrained": str(path)}).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _tokens(ref, x))


def test_an_unlabelled_file_of_a_model_with_quick_gelu_weights_warns(tmp_path, caplog):
    path = tmp_path / "clip-l.pt"
    path.write_bytes(b"not read here")
    with caplog.at_level(logging.WARNING, logger="emofer.encoders.openclip"):
        assert quick_gelu_for("ViT-L-14", str(path)) is False
    assert "nothing records its activation" in caplog.text and "openai" in caplog.text
    caplog.clear()
    assert quick_gelu_for(OPENCLIP_TINY, str(path)) is False  # no QuickGELU weights exist: no warning
    assert caplog.text == ""
    assert quick_gelu_for("ViT-L-14", "openai") is True and quick_gelu_for("ViT-L-14", "laion2b_s32b_b82k") is False
