"""Make (raw, rewritten) seed pairs with a strong LLM, and export them as SFT data for a small rewriter.

    # 1. a strong model behind an OpenAI-compatible API rewrites a sample of the cleaned corpus
    export OPENAI_API_KEY=...
    python tools/make_seed_pairs.py generate --input out/arabic_work/prepare/shard-*.jsonl \\
        --sample 2000 --model gpt-4o --base-url https://api.openai.com/v1 \\
        --guidelines examples/guidelines/native_alignment_ar.yaml --out seed/pairs.jsonl
    # 2. chat-format SFT data (the rewriting stage's exact prompt -> the expert's rewrite)
    python tools/make_seed_pairs.py export --pairs seed/pairs.jsonl \\
        --guidelines examples/guidelines/native_alignment_ar.yaml --out seed/sft.jsonl

Input is JSONL with a text field: the prepare stage's shards (cleaned and
deduplicated) or raw files. Rewrites are validated with the pipeline's checks;
failed ones are kept in the pairs file (rewritten: null) and left out of the
export. Rerunning `generate` continues an interrupted run. Train the rewriter
with any SFT tool that reads chat "messages" (e.g. TRL's SFTTrainer, or
LLaMA-Factory with the sharegpt/openai format); see docs/alignment.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from native_megatron.alignment.backends import BackendUnavailable, build_backend
from native_megatron.alignment.config import RewriteConfig
from native_megatron.alignment.guidelines import load_guidelines
from native_megatron.alignment.rewrite import Rewriter
from native_megatron.alignment.seed_pairs import generate_pairs, sample_documents, sft_records
from native_megatron.alignment.validation import ValidationConfig
from native_megatron.cli import add_config_help, cli_main, print_config
from native_megatron.data.readers import InputError, RecordSkip, expand_inputs, iter_records, parse_record
from native_megatron.utils.config import given_keys, load_config, split_overrides
from native_megatron.utils.logging import setup_logging

# The config sections set by --section.key=value on generate: (dataclass, key prefix).
SETTINGS = [(RewriteConfig, "rewrite."), (ValidationConfig, "validate.")]
# generate's own defaults, under the --config file: a strong model behind an OpenAI-compatible API.
DEFAULTS = {"rewrite.backend": "openai", "rewrite.on_failure": "retry"}


@dataclass
class SeedPairsConfig:
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    validate: ValidationConfig = field(default_factory=ValidationConfig)


def load_generate_config(args, overrides: list[str]) -> SeedPairsConfig:
    """--config YAML, then the flags, then --section.key=value overrides; DEFAULTS where none of them says."""
    given = given_keys(args.config, overrides)
    flags = {"rewrite.model": args.model, "rewrite.guidelines": args.guidelines,
             "rewrite.openai.base_urls": args.base_url}
    base = {k: v for k, v in DEFAULTS.items() if k not in given}
    base.update({k: v for k, v in flags.items() if v is not None})
    return load_config(SeedPairsConfig, args.config, overrides, base=base)


def read_rows(files: list[str], text_key: str):
    for rec in iter_records(files, text_key, "id"):
        try:
            doc_id, text = parse_record(rec, text_key, "id", Path(files[rec.file]).name)
        except RecordSkip:
            continue
        yield {"id": doc_id, "file": files[rec.file], "line": rec.line, "text": text}


def cmd_generate(args, overrides) -> int:
    cfg = load_generate_config(args, overrides)
    if args.print_config:
        return print_config(cfg)
    files = expand_inputs(args.input)
    rows = sample_documents(read_rows(files, args.text_key), args.sample, args.seed)
    backend = build_backend(cfg.rewrite)
    try:
        rewriter = Rewriter(cfg.rewrite, cfg.validate, backend, load_guidelines(cfg.rewrite.guidelines))
        counts = generate_pairs(rewriter, rows, Path(args.out), cfg.rewrite.batch_size)
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"{exc}; rerun to continue") from None
    finally:
        backend.close()
    print(f"{args.out}: {counts['passed']} pairs passed validation, {counts['failed']} failed, "
          f"{counts['skipped_existing']} already there")
    return 0


def cmd_export(args, overrides) -> int:
    guidelines = load_guidelines(args.guidelines)
    n = 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.pairs, encoding="utf-8") as f, open(args.out, "w", encoding="utf-8") as out:
        for rec in sft_records((json.loads(line) for line in f if line.strip()), guidelines, args.include_failed):
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    print(f"wrote {n} SFT examples to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True,
                         help="see generate --help for the --rewrite.* and --validate.* settings")
    g = sub.add_parser("generate", help="rewrite a sample with a strong LLM")
    g.add_argument("--input", nargs="+", required=True)
    g.add_argument("--text-key", default="text")
    g.add_argument("--sample", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--model", help="served model name (or rewrite.model in --config)")
    g.add_argument("--base-url", nargs="+", help="OpenAI-compatible endpoints (default http://127.0.0.1:8000/v1)")
    g.add_argument("--guidelines", help="alignment guidelines YAML (or rewrite.guidelines in --config)")
    g.add_argument("--out", required=True)
    g.add_argument("--config", metavar="YAML", help="rewrite and validate settings; flags and overrides win over it")
    add_config_help(g, SETTINGS,
                    note="explained in docs/alignment.md")
    e = sub.add_parser("export", help="pairs -> chat-format SFT JSONL")
    e.add_argument("--pairs", required=True)
    e.add_argument("--guidelines", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--include-failed", action="store_true", help="keep failed pairs, answering with the raw text")
    return p


@cli_main(exit_codes={InputError: 2, BackendUnavailable: 3})
def main(argv: list[str] | None = None) -> int:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    setup_logging("INFO")
    return cmd_generate(args, overrides) if args.command == "generate" else cmd_export(args, overrides)

