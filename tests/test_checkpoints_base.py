"""The checkpoint-import engine: rules, map_state's named errors, kept-at-init reporting, folder reading."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from emofer.checkpoints import CHECKPOINT_FORMATS, CheckpointError, Rule, map_state
from emofer.checkpoints.base import load_mapped, read_state


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.fusion = nn.ModuleDict({"proj": nn.Linear(4, 5), "face": nn.Linear(2, 2)})


RULES = [
    Rule.rename(r"vis\.(weight|bias)", r"encoder.\1"),
    Rule.rename(r"proj\.(weight|bias)", r"fusion.proj.\1"),
    Rule.drop(r"head\..*", "an unused head"),
]


def source() -> dict[str, torch.Tensor]:
    return {
        "vis.weight": torch.randn(4, 3),
        "vis.bias": torch.randn(4),
        "proj.weight": torch.randn(5, 4),
        "proj.bias": torch.randn(5),
        "head.weight": torch.randn(1),
    }


def test_maps_drops_and_reports_kept_parts():
    model, src = Toy(), source()
    mapped = map_state(src, RULES, model, fills=["encoder.", "fusion.proj."])
    assert set(mapped.state) == {"encoder.weight", "encoder.bias", "fusion.proj.weight", "fusion.proj.bias"}
    assert mapped.dropped == {"head.weight": "an unused head"}
    assert mapped.kept == ["fusion.face"]
    load_mapped(model, mapped)
    assert torch.equal(model.fusion.proj.weight, src["proj.weight"])


def test_extra_missing_and_misshaped_keys_are_named():
    src = source()
    src["surprise.weight"] = torch.randn(2)
    with pytest.raises(CheckpointError, match=r"no rule maps or drops.*surprise\.weight"):
        map_state(src, RULES, Toy(), fills=["encoder."])
    src = source()
    del src["vis.bias"]
    with pytest.raises(CheckpointError, match=r"lacks \(missing keys\): encoder\.bias"):
        map_state(src, RULES, Toy(), fills=["encoder."])
    src = source()
    src["proj.weight"] = torch.randn(5, 3)
    with pytest.raises(CheckpointError, match=r"wrong shape: proj\.weight \(5, 3\) -> fusion\.proj\.weight \(5, 4\)"):
        map_state(src, RULES, Toy(), fills=["encoder."])


def test_a_rule_mapping_into_nothing_is_named():
    rules = [Rule.rename(r"vis\.(weight|bias)", r"encoder.lin.\1"), *RULES[1:]]
    with pytest.raises(CheckpointError, match=r"vis\.weight -> encoder\.lin\.weight"):
        map_state(source(), rules, Toy())


def test_drop_rule_needs_a_reason():
    with pytest.raises(ValueError, match="needs a reason"):
        Rule(r"x", None)


def test_reads_sharded_bin_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    a, b = {"x": torch.ones(2)}, {"y": torch.zeros(3)}
    torch.save(a, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save(b, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = {"weight_map": {"x": "pytorch_model-00001-of-00002.bin", "y": "pytorch_model-00002-of-00002.bin"}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert set(read_state(tmp_path)) == {"x", "y"}
    single = tmp_path / "single"
    single.mkdir()
    save_file(a, str(single / "model.safetensors"))
    assert torch.equal(read_state(single)["x"], a["x"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no weights"):
        read_state(empty)


def test_registry_is_public():
    import emofer

    assert emofer.CHECKPOINT_FORMATS is CHECKPOINT_FORMATS
