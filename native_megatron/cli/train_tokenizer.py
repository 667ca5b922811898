"""Train a sentencepiece tokenizer on a JSONL/Parquet corpus.

    python tools/train_tokenizer.py --input examples/data/sample_ar.jsonl \\
        --model-prefix examples/tokenizer/sample_ar --vocab-size 8000

Texts are cleaned with the same default steps as the preprocessing pipeline
(``--no-clean`` to train on them as they are), so the tokenizer sees the text
it will later encode. Continued pre-training of Llama-3 keeps Llama-3's own
tokenizer instead: pass its directory to preprocess_aligned.py --tokenizer.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from native_megatron.cli import cli_main
from native_megatron.data.cleaning import CleanConfig, Cleaner
from native_megatron.data.readers import (
    InputError,
    RecordSkip,
    check_text_key,
    expand_inputs,
    iter_records,
    parse_record,
)
from native_megatron.data.tokenizer import load_tokenizer, train_sentencepiece
from native_megatron.utils.logging import setup_logging


def corpus_texts(files: list[str], text_key: str, id_key: str, clean: bool, skips: Counter | None = None):
    """The texts of ``files`` (cleaned if ``clean``); each record left out is counted in ``skips`` by reason."""
    cleaner = Cleaner(CleanConfig()) if clean else None
    skips = Counter() if skips is None else skips
    for rec in iter_records(files, text_key, id_key):
        try:
            _, text = parse_record(rec, text_key, id_key, files[rec.file])
        except RecordSkip as skip:
            skips[skip.reason] += 1
            continue
        if cleaner is not None:
            text = cleaner.clean(text)
            reason = cleaner.filter(text)
            if reason is not None:
                skips[reason] += 1
                continue
        yield text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="JSONL (.gz/.zst) or Parquet files")
    p.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--text-key", default="text")
    p.add_argument("--id-key", default="id")
    p.add_argument("--no-clean", action="store_true", help="train on the texts without cleaning them")
    p.add_argument("--threads", type=int, default=1)
    return p


@cli_main(exit_codes={InputError: 2})
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("INFO")
    files = expand_inputs(args.input)
    check_text_key(files, args.text_key)
    skips: Counter = Counter()
    try:
        model = train_sentencepiece(corpus_texts(files, args.text_key, args.id_key, not args.no_clean, skips),
                                    args.model_prefix, args.vocab_size, args.model_type,
                                    args.character_coverage, num_threads=args.threads)
    except RuntimeError as exc:  # sentencepiece reports e.g. a vocabulary too large for the corpus
        print(f"error: sentencepiece training failed: {str(exc).splitlines()[-1]}", file=sys.stderr)
        return 2
    tok = load_tokenizer(model)
    print(f"wrote {model}: vocab {tok.vocab_size}, EOD id {tok.eod_id}")
    if skips:
        print(f"left out {sum(skips.values()):,} records: " + ", ".join(f"{r} {n:,}" for r, n in skips.most_common()))
    return 0
