"""Shared fixtures: the shipped sample corpus and tokenizer, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from native_megatron.utils.logging import quiet_third_party

quiet_third_party()

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = ROOT / "examples" / "data" / "sample_ar.jsonl"
SAMPLE_TOKENIZER = ROOT / "examples" / "tokenizer" / "sample_ar.model"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    return SAMPLE_CORPUS


@pytest.fixture(scope="session")
def sample_tokenizer() -> Path:
    return SAMPLE_TOKENIZER


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    yield


def require_tool(path: str | None, env_var: str, hint: str) -> str:
    """The tool's path; without one, skip, or fail where CI demands it (``env_var=1``)."""
    if path is None:
        if os.environ.get(env_var) == "1":
            pytest.fail(f"{env_var}=1 but {hint}")
        pytest.skip(hint)
    return path


def same_bytes(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()
