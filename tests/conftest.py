"""Shared fixtures: the shipped sample corpus and tokenizer, and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from native_megatron.utils.logging import quiet_third_party
from tests.helpers.paths import SAMPLE_CORPUS, SAMPLE_TOKENIZER

quiet_third_party()



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
