"""The hf backend end to end on the shipped sample through to .bin/.idx; the vllm backend where it can run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from native_megatron.alignment.pipeline import AlignedPreprocessConfig, run_preprocess_aligned
from native_megatron.alignment.tiny_model import make_tiny_chat_model
from native_megatron.data.indexed import dataset_prefix
from native_megatron.utils.config import load_config

ROOT = Path(__file__).resolve().parents[2]
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, sample_corpus):
    texts = [json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8")]
    return str(make_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=600))


def cfg(prefix, tokenizer, corpus, backend, model, *overrides):
    base = {"input.paths": [str(corpus)], "output.prefix": str(prefix), "tokenize.tokenizer": str(tokenizer),
            "run.workers": 2, "run.progress": False, "rewrite.backend": backend, "rewrite.model": model,
            "rewrite.guidelines": str(GUIDELINES), "rewrite.sampling.max_new_tokens": 8,
            "rewrite.on_failure": "retry",
            # A tiny random model: every rewrite fails validation, which is what these tests count.
            "rewrite.min_rewritten_fraction": 0}
    return load_config(AlignedPreprocessConfig, overrides=list(overrides), base=base)


@pytest.mark.slow
def test_hf_backend_on_the_sample_through_to_megatron_dataset(tmp_path, sample_corpus, sample_tokenizer,
                                                              tiny_model):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = tmp_path / "hf"
    stats = run_preprocess_aligned(cfg(prefix, sample_tokenizer, sample_corpus, "hf", tiny_model))
    rows = [json.loads(line) for line in open(f"{prefix}_manifest.jsonl", encoding="utf-8")]
    lines = sum(1 for _ in open(sample_corpus, "rb"))
    assert len(rows) == lines == stats["documents_in"]
    sent = [r for r in rows if r.get("backend") == "hf"]
    assert sent and all(r.get("retried") for r in sent)           # every noisy rewrite was retried once
    assert {r["status"] for r in sent} == {"kept_raw"}            # and then kept raw
    ds = IndexedDataset(dataset_prefix(str(prefix)))
    assert len(ds) == len(sent) == stats["documents_written"]
    assert sum(r["tokens"] for r in sent) == int(ds.sequence_lengths.sum())


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_backend(tmp_path, sample_corpus, sample_tokenizer, tiny_model):
    assert torch.cuda.is_available()
    prefix = tmp_path / "vllm"
    stats = run_preprocess_aligned(cfg(prefix, sample_tokenizer, sample_corpus, "vllm", tiny_model,
                                       "--rewrite.vllm.gpu_memory_utilization=0.3"))
    assert stats["rewrite"]["backend"] == "vllm" and stats["rewrite"]["completion_tokens"] > 0
    assert sum(stats["documents_by_status"].values()) == stats["documents_in"]
