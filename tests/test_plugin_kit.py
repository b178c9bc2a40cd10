"""The plugin kit: every part docs/registries.md shows passes `check-part`, and broken parts are caught."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
from torch import nn

from emofer.cli import main
from emofer.encoders import ENCODERS, FACE_PRIORS
from emofer.fusion import FUSIONS, Fusion
from emofer.llm import LLM_HEADS
from emofer.partcheck import check_part

DOCS = Path(__file__).resolve().parents[1] / "docs" / "registries.md"
DOC_PARTS = {
    "encoders": ("my-patch-encoder", {"width": 16}),
    "face_priors": ("my-face-prior", {}),
    "fusions": ("my-pooled-fusion", {"num_tokens": 4}),
    "llm_heads": ("my-linear-head", {}),
}
REGISTRIES = {"encoders": ENCODERS, "face_priors": FACE_PRIORS, "fusions": FUSIONS, "llm_heads": LLM_HEADS}


@pytest.fixture(scope="module")
def doc_plugin(tmp_path_factory):
    """The docs' code blocks that register parts, written as a plugin package in a temp dir and imported."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "my_lab").mkdir()
    (root / "my_lab" / "__init__.py").write_text("")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S) if ".register(" in b]
    assert len(blocks) == 4, "docs/registries.md should show one registered part of each kind"
    (root / "my_lab" / "parts.py").write_text("\n\n".join(blocks))
    # test_docs runs the same blocks: their parts may be registered already (restored after)
    earlier = {kind: REGISTRIES[kind]._entries.pop(name, None) for kind, (name, _) in DOC_PARTS.items()}
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("my_lab.parts")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("my_lab.parts", None)
        sys.modules.pop("my_lab", None)
        for kind, (name, _) in DOC_PARTS.items():
            REGISTRIES[kind]._entries.pop(name, None)
            if earlier[kind] is not None:
                REGISTRIES[kind]._entries[name] = earlier[kind]


@pytest.mark.parametrize("kind", list(DOC_PARTS))
def test_every_documented_part_passes_the_checks(doc_plugin, kind):
    name, kwargs = DOC_PARTS[kind]
    report = check_part(kind, name, kwargs, steps=10)
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == ["build", "dims", "gradients", "learning"]
    assert report.losses[-1] < report.losses[0]


class LyingFusion(Fusion):
    """Declares one token per frame but returns two; one of its layers is never used."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.num_output_tokens = 1
        self.proj = nn.Linear(spec.visual_dim, spec.out_dim)
        self.unused = nn.Linear(spec.visual_dim, spec.out_dim)

    def forward(self, visual, priors=None, text=None):
        return self.proj(visual[:, :2])


class Stuck(Fusion):
    """Its output does not depend on any parameter: gradients reach nothing, nothing learns."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.num_output_tokens = 1
        self.proj = nn.Linear(spec.visual_dim, spec.out_dim)

    def forward(self, visual, priors=None, text=None):
        return visual.new_zeros(visual.shape[0], 1, self.spec.out_dim) + 0 * visual.mean()


@pytest.fixture
def broken_parts():
    FUSIONS.add("test-lying-fusion", LyingFusion, force=True)
    FUSIONS.add("test-stuck-fusion", Stuck, force=True)
    yield
    FUSIONS._entries.pop("test-lying-fusion", None)
    FUSIONS._entries.pop("test-stuck-fusion", None)


def test_a_part_that_misdeclares_its_dims_or_leaves_parameters_unused_is_reported(broken_parts):
    report = check_part("fusions", "test-lying-fusion", base="llava-tiny", steps=4)
    levels = {c.name: c.level for c in report.checks}
    assert levels["dims"] == "fail" and "tokens (2, 64), declared (num_output_tokens, LLM hidden size) = (1, 64)" in str(report)
    assert levels["gradients"] == "warn" and "unused.weight" in str(report)
    assert not report.ok


def test_a_part_nothing_trains_through_fails(broken_parts):
    report = check_part("fusions", "test-stuck-fusion", base="llava-tiny", steps=4)
    assert {c.name: c.level for c in report.checks}["gradients"] == "fail"
    assert not report.ok


def test_a_part_that_does_not_build_is_reported_and_the_cli_exits_1(capsys):
    report = check_part("fusion", "mlp2x-gelu", {"no_such_option": 1}, base="llava-tiny")
    assert [c.level for c in report.checks] == ["fail"] and "no_such_option" in str(report)
    assert main(["check-part", "fusions", "mlp2x-gelu", "no_such_option=1", "--base", "llava-tiny"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_the_pytest_helper_fails_with_the_report(broken_parts):
    from emofer.testing import check_part as helper

    with pytest.raises(AssertionError, match="test-stuck-fusion"):
        helper("fusions", "test-stuck-fusion", base="llava-tiny", steps=2)
