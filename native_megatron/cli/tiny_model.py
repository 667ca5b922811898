"""Make a tiny random chat model (LlamaForCausalLM + BPE tokenizer) for demos and tests.

    python tools/make_tiny_model.py --out runs/demo/tiny_rewriter --corpus examples/data/sample_ar.jsonl

The tokenizer is a byte-level BPE learned from the corpus's texts (--text-key)
with Hugging Face tokenizers, --vocab-size tokens at most; lines without a text
are skipped and counted. Its rewrites are noise, which the validators reject:
the demo shows the machinery, not alignment. Use a real instruct model (a local
Qwen or Llama directory, or a `vllm serve` URL) to rewrite for real.
"""

from __future__ import annotations

import argparse
from collections import Counter

from native_megatron.cli import cli_main
from native_megatron.cli.train_tokenizer import corpus_texts
from native_megatron.data.readers import InputError, check_text_key, expand_inputs
from native_megatron.utils.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory to write the model and tokenizer to")
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                   help="JSONL (.gz/.zst) or Parquet files whose texts the tokenizer is learned from")
    p.add_argument("--text-key", default="text", help="the key (column) holding each document's text")
    p.add_argument("--vocab-size", type=int, default=1000,
                   help="tokens to learn, special and byte tokens included (default 1000; at least 300)")
    p.add_argument("--seed", type=int, default=0)
    return p


@cli_main(exit_codes={InputError: 2})
def main(argv: list[str] | None = None) -> int:
    from tokenizers import Tokenizer

    from native_megatron.alignment.tiny_model import make_tiny_chat_model

    args = build_parser().parse_args(argv)
    # 256 byte tokens and 4 special ones come first: a smaller vocabulary learns no merge at all.
    if args.vocab_size < 300:
        raise ConfigError(f"--vocab-size {args.vocab_size}: give at least 300 (260 are bytes and special tokens)")
    files = expand_inputs(args.corpus)
    check_text_key(files, args.text_key)
    skips: Counter = Counter()
    texts = list(corpus_texts(files, args.text_key, "id", clean=False, skips=skips))
    if not texts:
        raise InputError(f"--corpus: no line has a text under '{args.text_key}' "
                         f"({', '.join(f'{r} {n}' for r, n in skips.most_common()) or 'empty'})")
    out = make_tiny_chat_model(args.out, texts, args.vocab_size, seed=args.seed)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    chars = sum(len(t) for t in texts)
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    print(f"wrote a tiny random chat model to {out}: a {vocab:,}-token BPE learned from {len(texts):,} texts "
          f"({chars / tokens:.2f} characters per token on them)")
    if vocab < args.vocab_size:
        print(f"the corpus held merges for {vocab:,} of the {args.vocab_size:,} tokens asked: give more text "
              f"for a larger vocabulary")
    if skips:
        print(f"skipped {sum(skips.values()):,} lines without a text: "
              + ", ".join(f"{r} {n:,}" for r, n in skips.most_common()))
    return 0
