"""A tiny random HF chat model (with BOS and a chat template) shared by the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.paths import SAMPLE_CORPUS


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    from native_megatron.alignment.tiny_model import make_tiny_chat_model

    texts = [json.loads(line)["text"] for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()[:150]]
    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny_hf") / "model", texts, vocab_size=600)
