"""Turn a raw Arabic corpus into a natively aligned Megatron indexed dataset (.bin/.idx).

    python tools/preprocess_aligned.py --input data/*.jsonl.zst --output-prefix out/arabic \\
        --tokenizer /models/Meta-Llama-3-8B --rewrite vllm --model /models/rewriter \\
        --guidelines examples/guidelines/native_alignment_ar.yaml

Stages: clean -> dedup -> rewrite under the guidelines -> validate -> tokenize
(``--rewrite none`` skips rewriting: the raw baseline of the paper's
experiments). Beside the dataset it writes a manifest (one row per input line:
rewritten, kept raw or dropped, with the reason) and a stats JSON. Any config
key can be set as ``--section.key=value`` (e.g. ``--clean.remove_diacritics=true``,
``--rewrite.openai.base_urls=[http://h1:8000/v1,http://h2:8000/v1]``);
``--config FILE.yaml`` sets many at once.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys

from native_megatron.alignment.backends import BackendUnavailable
from native_megatron.alignment.pipeline import AlignedPreprocessConfig, RewriteStage, run_preprocess_aligned
from native_megatron.alignment.rewrite import TooFewRewritten, format_rewritten
from native_megatron.cli import add_config_help, cli_main, print_config
from native_megatron.data.pipeline import STAGES, format_summary
from native_megatron.data.readers import InputError
from native_megatron.data.tokenizer import TokenizerError
from native_megatron.utils.config import load_config, split_overrides
from native_megatron.utils.logging import setup_logging

logger = logging.getLogger("preprocess_aligned")

EXIT_STATUS = """exit status:
  0  done
  2  a setup mistake: one line, before any work
  3  the rewriter's backend does not answer; finished shards are kept: rerun the same command
  4  less than rewrite.min_rewritten_fraction of the documents was rewritten; nothing tokenized, shards kept
  5  the disk is full (or over quota); finished work is kept: free space and rerun the same command"""

# The config sections set by --section.key=value: (dataclass, key prefix).
SETTINGS = [(AlignedPreprocessConfig, "")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", metavar="FILE",
                   help="JSONL (.gz/.bz2/.zst) or Parquet files, directories or globs")
    p.add_argument("--output-prefix", metavar="PREFIX", help="write PREFIX_text_document.bin/.idx, manifest and stats")
    p.add_argument("--tokenizer", metavar="PATH", help="sentencepiece .model, tokenizer.json, or a model directory")
    p.add_argument("--rewrite", choices=["none", "vllm", "openai", "hf"],
                   help="rewriting backend: vllm (in-process GPU engine), openai (OpenAI-compatible servers, "
                        "e.g. vllm serve), hf (transformers); none keeps the cleaned raw text (default)")
    p.add_argument("--model", help="rewriter: model directory (vllm, hf) or served model name (openai)")
    p.add_argument("--guidelines", metavar="YAML", help="alignment guidelines, e.g. "
                   "examples/guidelines/native_alignment_ar.yaml")
    p.add_argument("--rank", type=int, help="this process's share of the rewrite shards (default: SLURM array)")
    p.add_argument("--world-size", type=int, help="number of processes sharing the rewrite shards")
    p.add_argument("--text-key", help="JSON key / Parquet column with the text (default: text)")
    p.add_argument("--id-key", help="JSON key / Parquet column with the document id (default: id)")
    p.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    p.add_argument("--stage", choices=STAGES,
                   help="run one stage only (default: all); prepare's steps clean, merge, clusters and filter "
                        "one at a time in a SLURM array (docs/data.md)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier work for this prefix")
    p.add_argument("--config", metavar="YAML", help="settings file; flags and overrides win over it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--log-level", default="INFO")
    add_config_help(p, SETTINGS,
                    note="input, clean, dedup, tokenize, output and run in docs/data.md; "
                         "rewrite and validate in docs/alignment.md")
    return p


def config_from_args(argv: list[str]) -> tuple[AlignedPreprocessConfig, argparse.Namespace]:
    rest, overrides = split_overrides(argv)
    args = build_parser().parse_args(rest)
    base = {
        "input.paths": args.input, "input.text_key": args.text_key, "input.id_key": args.id_key,
        "output.prefix": args.output_prefix, "tokenize.tokenizer": args.tokenizer,
        "run.workers": args.workers, "run.stage": args.stage,
        "rewrite.backend": args.rewrite, "rewrite.model": args.model, "rewrite.guidelines": args.guidelines,
        "rewrite.rank": args.rank, "rewrite.world_size": args.world_size,
        "output.overwrite": True if args.overwrite else None,
        "run.progress": False if args.no_progress else None,
    }
    setup_logging(args.log_level)
    cfg = load_config(AlignedPreprocessConfig, args.config, overrides,
                      base={k: v for k, v in base.items() if v is not None})
    return cfg, args


class DiskFull(Exception):
    """A write failed for want of space: one line naming the file."""


# The exit status of each failure the user can act on (EXIT_STATUS); a ConfigError (damaged work, a lost
# lease too) is 2.
EXIT_CODES = {(InputError, TokenizerError, PermissionError): 2, BackendUnavailable: 3, TooFewRewritten: 4,
              DiskFull: 5}


def _run(cfg: AlignedPreprocessConfig) -> dict:
    try:
        return run_preprocess_aligned(cfg)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else f" under {cfg.output.prefix}"
        raise DiskFull(f"no space left on the device{where} ({exc.strerror}); finished work is kept: free "
                       f"space and rerun the same command") from None


@cli_main(exit_codes=EXIT_CODES)
def main(argv: list[str] | None = None) -> int:
    cfg, args = config_from_args(sys.argv[1:] if argv is None else argv)
    if args.print_config:
        return print_config(cfg)
    stats = _run(cfg)
    if "prepare_step" in stats:
        step = stats["prepare_step"]
        which = "every task" if step["task"] is None else f"task {step['task']}"
        print(f"{step['step']}: {which} finished ({step['tasks']} prepare task(s) in "
              f"{cfg.output.prefix}_work/prepare)")
    elif "prepare" in stats and len(stats) == 1:
        p = stats["prepare"]
        print(f"prepare: {p['documents_in']} documents in, {p['documents_kept']} kept, "
              f"{p['shards']} shard(s) in {cfg.output.prefix}_work/prepare")
    elif "rewrite" in stats and len(stats) == 1:
        r = stats["rewrite"]
        print(f"rewrite: {r['shards_done']} of {r['shards_total']} shards finished; by status: "
              + ", ".join(f"{k} {v}" for k, v in r["by_status"].items()))
        print(format_rewritten(r))
    else:
        if "rewrite" in stats:
            print(format_rewritten(stats["rewrite"]))
        print(format_summary(stats, RewriteStage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
