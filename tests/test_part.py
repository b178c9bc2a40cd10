"""Part contracts fail at construction, naming what is missing; freezing is one mechanism for every part."""

from __future__ import annotations

import inspect

import pytest
from torch import nn

from emofer import build_model
from emofer._wiring import WiringError
from emofer.encoders import ENCODERS, FacePrior, VisionEncoder
from emofer.fusion import Fusion, FusionSpec
from emofer.fusion.temporal import TemporalStep
from emofer.llm import LLMHead
from emofer.part import Part, abstract_attribute, is_frozen, set_frozen
from emofer.registry import ComponentConfigError


class _Encoder(VisionEncoder):
    """Sets everything but embed_dim."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.num_tokens, self.image_size = 4, 8
        self.mean = self.std = (0.5, 0.5, 0.5)
        self.proj = nn.Linear(3, width)
        self.drop = nn.Dropout(0.5)


class _Prior(FacePrior):
    def __init__(self) -> None:
        super().__init__()
        self.global_dim, self.local_dim, self.image_size = 4, 4, 8


class _Fusion(Fusion):
    def __init__(self, spec: FusionSpec) -> None:
        super().__init__(spec)


class _Head(LLMHead):
    pass


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (_Encoder, r"_Encoder does not set 'embed_dim' \(VisionEncoder: width D of the tokens"),
        (_Prior, r"_Prior does not set 'num_local', 'attribute_labels' \(FacePrior: number L"),
        (lambda: _Fusion(FusionSpec(4, 4, 8)), r"_Fusion does not set 'num_output_tokens' \(Fusion:"),
        (_Head, r"_Head does not set 'hidden_size' \(LLMHead: width of the visual tokens"),
    ],
)
def test_a_part_that_forgets_a_declared_attribute_fails_when_built(build, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        build()


def test_declared_attributes_may_be_class_attributes_or_properties() -> None:
    class Fixed(_Encoder):
        embed_dim = 4

    class Computed(_Encoder):
        @property
        def embed_dim(self) -> int:
            return self.proj.out_features

    assert Fixed().embed_dim == 4 and Computed(width=6).embed_dim == 6


def test_registries_read_the_init_signature_of_parts() -> None:
    class Fixed(_Encoder):
        embed_dim = 4

    assert list(inspect.signature(Fixed).parameters) == ["width"]
    ENCODERS.register("test-fixed-part")(Fixed)
    try:
        with pytest.raises(ComponentConfigError, match=r"unexpected argument 'widht' \(did you mean 'width'\?\)"):
            ENCODERS.build({"name": "test-fixed-part", "widht": 3})
        ENCODERS._entries["test-broken-part"] = ENCODERS._entries["test-fixed-part"].__class__(
            "test-broken-part", _Encoder, "tests"
        )
        with pytest.raises(TypeError, match="does not set 'embed_dim'"):
            ENCODERS.build({"name": "test-broken-part"})
    finally:
        ENCODERS._entries.pop("test-fixed-part")
        ENCODERS._entries.pop("test-broken-part", None)


def test_the_wiring_refuses_a_part_outside_its_contract() -> None:
    ENCODERS.add("test-plain-module", lambda: nn.Linear(3, 4))
    try:
        with pytest.raises(WiringError, match=r"encoder 'test-plain-module' built a Linear, not a VisionEncoder"):
            build_model({"model": {"encoder": {"name": "test-plain-module"}, "llm": {"name": "classifier"}}})
    finally:
        ENCODERS._entries.pop("test-plain-module")


class _Trainable(_Encoder):
    embed_dim = 4


@pytest.mark.parametrize("part", [_Trainable, lambda: TemporalStep(4)])
def test_freezing_is_one_mechanism(part) -> None:
    m = part()
    assert isinstance(m, Part)
    parent = nn.ModuleDict({"part": m, "other": nn.Linear(2, 2)})
    m.freeze()
    assert m.is_frozen and is_frozen(m) and not m.training
    parent.train()
    has_weights = any(True for _ in m.parameters())
    assert m.training != has_weights and parent["other"].training  # a frozen part stays in eval mode
    m.unfreeze()
    parent.train()
    assert m.training  # trainable again, or parameter-free: follows its parent


def test_set_frozen_on_a_group_uses_each_parts_policy() -> None:
    class AdaptersOnly(_Trainable):
        def unfreeze(self):
            self.proj.weight.requires_grad_(True)
            return self

    group = nn.ModuleList([AdaptersOnly(), nn.Linear(2, 2)])
    set_frozen(group, True)
    assert is_frozen(group) and not group.training
    set_frozen(group, False)
    assert group[0].proj.weight.requires_grad and not group[0].proj.bias.requires_grad
    assert all(p.requires_grad for p in group[1].parameters())


def test_abstract_attribute_reads_back_what_init_set() -> None:
    class Widget(Part):
        width = abstract_attribute("how wide")

        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width

    assert Widget(3).width == 3 and Widget(5).width == 5
    with pytest.raises(TypeError, match=r"Bare does not set 'width' \(Widget: how wide\)"):
        type("Bare", (Widget,), {"__init__": lambda self: Part.__init__(self)})()
