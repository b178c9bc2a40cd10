"""A model folder carries what it needs: copied to another place, with its sources gone, it loads or says why not."""

from __future__ import annotations

import shutil
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_model import assert_same_outputs, make_batch

import emofer
from emofer.checkpoints import CheckpointError, carried
from emofer.encoders import ENCODERS, FACE_PRIORS
from emofer.model import EmoFERModel
from emofer.testing import write_tiny_llm


def _saved_config(folder):
    return yaml.safe_load((folder / "config.yaml").read_text())


def test_a_pretrained_prior_from_the_cache_travels_inside_the_folder(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMOFER_CACHE", str(cache))
    torch.manual_seed(0)
    prior = FACE_PRIORS.build({"name": "facexformer-tiny", "image_size": 32})
    weights = cache / "face-priors" / "abc" / "face-prior.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in prior.state_dict().items()}, str(weights))
    cfg = emofer.load_config(
        "emo-llama-tiny", [f"model.face_prior.checkpoint={weights}", "model.freeze=[face_prior]"]
    )
    model = emofer.build_model(cfg)
    model.save_pretrained(tmp_path / "run" / "model")
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere")
    shutil.rmtree(weights.parent)  # the other machine has no such cache entry

    moved = tmp_path / "elsewhere" / "model"
    assert _saved_config(moved)["model"]["face_prior"]["checkpoint"] is None
    loaded = EmoFERModel.from_pretrained(moved)
    assert torch.equal(loaded.face_prior.state_dict()["linear_fuse.weight"], prior.state_dict()["linear_fuse.weight"])
    batch = make_batch(pixels=32)
    batch["face_pixels"] = torch.rand(3, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_same_outputs(model, loaded, batch)


def _lora_model(llm_dir):
    cfg = emofer.load_config(
        "llava-tiny", [f"model.llm.path={llm_dir}", "model.llm.lora={r: 4, alpha: 8, dropout: 0.0}"]
    )
    model = emofer.build_model(cfg)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


def test_a_small_base_llm_is_copied_into_the_folder(tmp_path) -> None:
    llm_dir = write_tiny_llm(tmp_path / "my-llm")
    model = _lora_model(llm_dir)
    model.save_pretrained(tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    llm_dir.rename(tmp_path / "gone")

    assert _saved_config(tmp_path / "copy")["model"]["llm"]["path"] == "sources/llm.path"
    loaded = EmoFERModel.from_pretrained(tmp_path / "copy")
    assert_same_outputs(model, loaded, make_batch(pixels=64))


def test_a_large_base_is_referenced_and_checked(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(carried, "SMALL_BYTES", 0)  # every source counts as large
    llm_dir = write_tiny_llm(tmp_path / "big-llm")
    model = _lora_model(llm_dir)
    model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "sources").exists()
    llm_dir.rename(tmp_path / "moved-llm")

    with pytest.raises(CheckpointError) as err:
        EmoFERModel.from_pretrained(tmp_path / "m")
    message = str(err.value)
    assert "model.llm.path" in message and str(llm_dir) in message and "is missing" in message
    assert "set model.llm.path in" in message

    from PIL import Image

    from emofer.cli import main

    Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "m"), str(tmp_path / "face.png")]) == 2
    printed = " ".join(capsys.readouterr().err.split())
    assert printed.startswith("error:") and "model.llm.path" in printed and "Traceback" not in printed

    config = tmp_path / "m" / "config.yaml"
    config.write_text(config.read_text().replace(str(llm_dir), str(tmp_path / "moved-llm")))
    assert_same_outputs(model, EmoFERModel.from_pretrained(tmp_path / "m"), make_batch(pixels=64))

    with open(tmp_path / "moved-llm" / "model.safetensors", "r+b") as f:  # another base under the same name
        f.seek(-4, 2)
        f.write(b"\0\1\2\3")
    with pytest.raises(CheckpointError, match=r"model.safetensors changed since the model was saved"):
        EmoFERModel.from_pretrained(tmp_path / "m")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin package in a temp dir registering the encoder ``test-plugin-cnn``."""
    package = tmp_path / "plugins" / "my_parts"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from my_parts import encoders  # noqa: F401\n")
    (package / "encoders.py").write_text(textwrap.dedent("""
        from emofer.encoders import ENCODERS

        @ENCODERS.register("test-plugin-cnn")
        def plugin_cnn(**kwargs):
            return ENCODERS.get("cnn-tiny")(**kwargs)
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    yield "my_parts.encoders"
    ENCODERS._entries.pop("test-plugin-cnn", None)
    for name in ("my_parts.encoders", "my_parts"):
        sys.modules.pop(name, None)


def test_custom_imports_are_recorded_only_for_plugin_parts(tmp_path, plugin) -> None:
    builtin = emofer.build_model(emofer.load_config("llava-tiny", [f"custom_imports=[{plugin}]"]))
    assert builtin.custom_imports == [plugin]
    builtin.save_pretrained(tmp_path / "builtin")
    assert _saved_config(tmp_path / "builtin")["custom_imports"] == []

    uses = emofer.build_model(emofer.load_config(
        "llava-tiny", ["custom_imports=[my_parts]", "model.encoder.name=test-plugin-cnn"]
    ))
    uses.save_pretrained(tmp_path / "plugin")
    assert _saved_config(tmp_path / "plugin")["custom_imports"] == ["my_parts"]

    ENCODERS._entries.pop("test-plugin-cnn")
    sys.modules.pop(plugin), sys.modules.pop("my_parts")
    loaded = EmoFERModel.from_pretrained(tmp_path / "plugin")  # the import registers it again
    assert ENCODERS.source("test-plugin-cnn") == plugin
    assert_same_outputs(uses, loaded, make_batch(pixels=64))
