"""Make a tiny random chat model (LlamaForCausalLM + BPE tokenizer) for demos and tests.

    python tools/make_tiny_model.py --out runs/demo/tiny_rewriter --corpus examples/data/sample_ar.jsonl

Its rewrites are noise, which the validators reject: the demo shows the
machinery, not alignment. Use a real instruct model (a local Qwen or Llama
directory, or a `vllm serve` URL) to rewrite for real.
"""

from __future__ import annotations

import argparse
import json

from native_megatron.alignment.tiny_model import make_tiny_chat_model
from native_megatron.cli import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory to write the model and tokenizer to")
    p.add_argument("--corpus", required=True, help="JSONL with a 'text' key, to train the tokenizer on")
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    texts = []
    with open(args.corpus, encoding="utf-8") as f:
        for line in f:
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                continue
    out = make_tiny_chat_model(args.out, texts, args.vocab_size, seed=args.seed)
    print(f"wrote a tiny random chat model to {out}")
    return 0

