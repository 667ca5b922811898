"""Paths of the shipped sample and small helpers shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CORPUS = ROOT / "examples" / "data" / "sample_ar.jsonl"
SAMPLE_TOKENIZER = ROOT / "examples" / "tokenizer" / "sample_ar.model"


def require_tool(path: str | None, env_var: str, hint: str) -> str:
    """The tool's path; without one, skip, or fail where CI demands it (``env_var=1``)."""
    if path is None:
        if os.environ.get(env_var) == "1":
            pytest.fail(f"{env_var}=1 but {hint}")
        pytest.skip(hint)
    return path


def same_bytes(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()
