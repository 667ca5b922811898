"""A tiny random Qwen2ForCausalLM (QKV biases, tied embeddings) with the tiny chat model's BPE tokenizer and
chat template: an instruct model to fine-tune in the SFT tests, made in seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers.training import ROOT

CORPUS = ROOT / "examples" / "data" / "sample_ar.jsonl"


def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def make_tiny_qwen2(base: Path, vocab: int = 2000, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from native_megatron.alignment.tiny_model import make_tiny_chat_model

    chat = make_tiny_chat_model(base / "chat", corpus_texts(), vocab_size=vocab)
    path = base / "tiny-qwen2"
    path.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(chat / name, path / name)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=3)
    Qwen2ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path
