"""The runnable examples in docs/ execute as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["registries.md"])
def test_doc_examples_run(doc):
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no python example"
    for block in blocks:
        exec(compile(block, f"docs/{doc}", "exec"), {"__name__": f"docs_{doc}"})
