#!/usr/bin/env python3
"""Turn a raw Arabic corpus into a Megatron indexed dataset (.bin/.idx).

    python tools/preprocess_aligned.py --input data/*.jsonl.zst --output-prefix out/arabic \\
        --tokenizer path/to/tokenizer.model --rewrite none

Stages: clean -> dedup -> tokenize (``--rewrite none``: the raw baseline of the
paper's experiments). Beside the dataset it writes a manifest (one row per
input line: kept, or dropped with the reason) and a stats JSON. Any config key
can be set as ``--section.key=value`` (e.g. ``--clean.remove_diacritics=true``,
``--dedup.threshold=0.7``); ``--config FILE.yaml`` sets many at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from native_megatron.data.pipeline import PreprocessConfig, format_summary, run_preprocess  # noqa: E402
from native_megatron.data.readers import InputError  # noqa: E402
from native_megatron.data.tokenizer import TokenizerError  # noqa: E402
from native_megatron.utils.config import ConfigError, load_config, split_overrides  # noqa: E402
from native_megatron.utils.logging import setup_logging  # noqa: E402

logger = logging.getLogger("preprocess_aligned")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any setting can also be given as --section.key=value; see docs/data.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", metavar="FILE", help="JSONL (.gz/.zst) or Parquet files, directories or globs")
    p.add_argument("--output-prefix", metavar="PREFIX", help="write PREFIX_text_document.bin/.idx, manifest and stats")
    p.add_argument("--tokenizer", metavar="PATH", help="sentencepiece .model, tokenizer.json, or a model directory")
    p.add_argument("--rewrite", choices=["none"], default="none",
                   help="alignment rewriting backend; 'none' keeps the cleaned raw text")
    p.add_argument("--text-key", help="JSON key / Parquet column with the text (default: text)")
    p.add_argument("--id-key", help="JSON key / Parquet column with the document id (default: id)")
    p.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    p.add_argument("--stage", choices=["all", "prepare", "tokenize"], help="run one stage only (default: all)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier work for this prefix")
    p.add_argument("--config", metavar="YAML", help="settings file; flags and overrides win over it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(argv: list[str]) -> PreprocessConfig:
    rest, overrides = split_overrides(argv)
    args = build_parser().parse_args(rest)
    base = {
        "input.paths": args.input, "input.text_key": args.text_key, "input.id_key": args.id_key,
        "output.prefix": args.output_prefix, "tokenize.tokenizer": args.tokenizer,
        "run.workers": args.workers, "run.stage": args.stage,
        "output.overwrite": True if args.overwrite else None,
        "run.progress": False if args.no_progress else None,
    }
    setup_logging(args.log_level)
    return load_config(PreprocessConfig, args.config, overrides,
                       base={k: v for k, v in base.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = config_from_args(argv)
        stats = run_preprocess(cfg)
    except (ConfigError, InputError, TokenizerError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "prepare" in stats and len(stats) == 1:
        p = stats["prepare"]
        print(f"prepare: {p['documents_in']} documents in, {p['documents_kept']} kept, "
              f"{p['shards']} shard(s) in {cfg.output.prefix}_work/prepare")
    else:
        print(format_summary(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
