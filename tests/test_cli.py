"""The `emofer` command through its real console-script entry point and `main()`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import emofer
from emofer.cli import main

EXE = Path(sys.executable).parent / "emofer"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, timeout=300, env={"COLUMNS": "200", "PATH": str(EXE.parent)}
    )


def test_version_through_console_script():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"emofer {emofer.__version__}"


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for kind, reg in emofer.REGISTRIES.items():
        assert kind in text
        names = reg.names()
        assert names[0] in text if names else "(empty)" in text


def test_list_one_kind_with_pattern_and_alias(capsys):
    assert main(["list", "encoder", "zzz-no-match*"]) == 0
    text = capsys.readouterr().out
    assert "encoders" in text and "(empty)" in text and "fusions" not in text


def test_list_unknown_kind(capsys):
    assert main(["list", "gizmos"]) == 2
    assert "unknown kind 'gizmos'" in capsys.readouterr().out


def test_list_presets(capsys):
    assert main(["list", "presets"]) == 0
    text = capsys.readouterr().out
    for name in emofer.list_presets():
        assert name in text
