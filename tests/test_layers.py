"""The import layers of docs/index.md, kept by import-linter's contracts in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.exists() else shutil.which("lint-imports") or "lint-imports"


def test_import_contracts_are_kept():
    done = subprocess.run(
        [_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_contracts_cover_the_documented_layering():
    """The layers contract is the full stack, not a weaker one, and the parts are independent."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in cfg["contracts"] if c["type"] == "layers")
    assert layers["exhaustive"] is True
    stack = [layer.replace(" ", "") for layer in layers["layers"]]
    assert stack[0] == "cli:commands"
    assert "encoders|fusion|llm|data" in stack  # the parts: independent siblings
    order = ["cli:commands", "demo", "grid", "experiment", "pretrain:system:cache:metrics", "model:_wiring:checkpoints",
             "encoders|fusion|llm|data", "config", "registry|labels"]
    assert [s for s in stack if s in order] == order
    forbidden = {m for c in cfg["contracts"] if c["type"] == "forbidden" for m in c["forbidden_modules"]}
    assert {"emofer.testing", "emofer.grid"} <= forbidden


def test_a_broken_layer_is_reported(tmp_path):
    """The contracts can fail: a copy of the package where a part imports another part breaks them."""
    shutil.copytree(ROOT / "emofer", tmp_path / "emofer", ignore=shutil.ignore_patterns("__pycache__", "configs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fusion = tmp_path / "emofer" / "fusion" / "projectors.py"
    fusion.write_text("import emofer.encoders.base  # noqa: F401\n" + fusion.read_text())
    done = subprocess.run(
        [_lint_imports(), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "emofer.fusion is not allowed to import emofer.encoders" in done.stdout.replace("\n", "")
