"""Build chat SFT data for the rewriter, and check a trained rewriter on the held-out pairs.

    # chat JSONL (make_seed_pairs export) -> token and loss-mask datasets, 2% held out
    python tools/build_sft_data.py build --input seed/sft.jsonl --tokenizer /models/Qwen2.5-3B-Instruct \\
        --out seed/sft_data
    torchrun --nproc-per-node 8 pretrain_arabic.py --config examples/configs/rewriter_sft_qwen2.5_3b.yaml
    python tools/convert_checkpoint.py megatron-to-hf --ckpt runs/rewriter_sft/checkpoints/iter_0000200 \\
        --out models/rewriter
    # the exported model rewrites the held-out raw documents; the pipeline's checks score each rewrite
    python tools/build_sft_data.py check --data seed/sft_data --pairs seed/pairs.jsonl --model models/rewriter \\
        --guidelines examples/guidelines/native_alignment_ar.yaml --backend vllm

`build` tokenizes each conversation with the tokenizer's chat template and masks the loss to the
assistant's tokens (see native_megatron/data/sft.py); train on the directory with data.sft_dir.
A conversation it cannot learn from (a message without a known role or string content, no assistant
turn or an empty one) or longer than --seq-length is skipped (or, --too-long truncate, cut to fit) and
counted by reason in the summary, sft_stats.json and OUT/skipped.jsonl.
`check` (vLLM where it is installed, else transformers; --backend chooses) prints the held-out pass
rate and the failures per check, and writes each result to
DATA/check.jsonl (or --out). See docs/training.md (SFT) and docs/alignment.md (the recipe).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

from native_megatron.alignment.backends import BackendUnavailable
from native_megatron.cli import add_config_help, cli_main, print_config
from native_megatron.data.sft import SKIPPED_FILE, SFTDataError
from native_megatron.utils.config import ConfigError, load_config, split_overrides
from native_megatron.utils.logging import setup_logging


def cmd_build(args) -> int:
    from native_megatron.data.sft import build_sft_data

    stats = build_sft_data(args.input, args.tokenizer, args.out, args.valid_fraction, args.seed,
                           progress=not args.no_progress, seq_length=args.seq_length or None,
                           too_long=args.too_long)
    for split, s in stats["splits"].items():
        print(f"{split}: {s['conversations']:,} conversations, {s['tokens']:,} tokens, "
              f"{s['trained_tokens']:,} of them trained on (assistant); length p50 {s['length_p50']:,}, "
              f"p99 {s['length_p99']:,}, max {s['length_max']:,}")
    skipped = sum(stats["skipped"].values())
    if skipped:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in stats["skipped"].items())
        print(f"skipped {skipped:,} of {stats['conversations_read']:,} conversations ({reasons}); "
              f"their ids and reasons are in {Path(args.out) / SKIPPED_FILE}")
    if stats["truncated"]:
        print(f"truncated {stats['truncated']:,} conversations to {args.seq_length + 1:,} tokens "
              f"(--seq-length {args.seq_length:,} + 1)")
    print(f"wrote {args.out} (end of turn {stats['end_of_turn']!r}); train with --data.sft_dir={args.out} "
          f"and a data.seq_length of at least the p99 length")
    return 0


def held_out_rows(data_dir: str, pairs: str) -> list[dict]:
    from native_megatron.data.sft import VALID_IDS

    ids_path = Path(data_dir) / VALID_IDS
    if not ids_path.is_file():
        raise ConfigError(f"--data {data_dir}: no {VALID_IDS} (make the directory with build)")
    ids = [line.strip() for line in ids_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raw = {}
    with open(pairs, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                p = json.loads(line)
                raw[str(p["id"])] = (p["raw"], line_no)
    missing = [i for i in ids if i not in raw]
    if missing:
        raise ConfigError(f"--pairs {pairs} lacks {len(missing)} held-out id(s), e.g. {missing[0]!r}: "
                          f"give the pairs file the SFT data was exported from")
    return [{"id": i, "text": raw[i][0], "file": pairs, "line": raw[i][1]} for i in ids]


def cmd_check(args, overrides) -> int:
    from native_megatron.alignment.backends import build_backend
    from native_megatron.alignment.config import RewriteConfig
    from native_megatron.alignment.guidelines import load_guidelines
    from native_megatron.alignment.rewrite import Rewriter
    from native_megatron.alignment.validation import ValidationConfig

    # One attempt per document: the pass rate of the model, not of the pipeline's retry.
    if args.backend is None:  # the recipe's command runs as written on a GPU node and on a laptop alike
        args.backend = "vllm" if importlib.util.find_spec("vllm") else "hf"
        print(f"backend: {args.backend} ({'vLLM is installed' if args.backend == 'vllm' else 'vLLM is not installed'}"
              f"; --backend vllm|hf|openai chooses)")
    base = {"backend": args.backend, "model": args.model, "guidelines": args.guidelines, "on_failure": "keep_raw"}
    cfg = load_config(RewriteConfig, None, [o.replace("--rewrite.", "--", 1) for o in overrides
                                            if o.startswith("--rewrite.")], base=base)
    validation = load_config(ValidationConfig, None, [o.replace("--validate.", "--", 1) for o in overrides
                                                      if o.startswith("--validate.")])
    if args.print_config:
        return print_config({"rewrite": cfg, "validate": validation})
    rows = held_out_rows(args.data, args.pairs)
    if not rows:
        raise ConfigError(f"--data {args.data} holds no held-out pairs (build with --valid-fraction > 0)")
    out = Path(args.out or Path(args.data) / "check.jsonl")
    try:
        backend = build_backend(cfg)
    except ConfigError as exc:
        if cfg.backend != "vllm":
            raise
        raise ConfigError(f"{exc}; or check with transformers on this machine (CPU works): --backend hf") from None
    failures: Counter = Counter()
    passed = 0
    try:
        rewriter = Rewriter(cfg, validation, backend, load_guidelines(cfg.guidelines))
        with open(out, "w", encoding="utf-8") as f:
            for start in range(0, len(rows), cfg.batch_size):
                for r in rewriter.rewrite(rows[start:start + cfg.batch_size]):
                    passed += not r.failed
                    failures.update(r.failed)
                    f.write(json.dumps({"id": r.row["id"], "passed": not r.failed, "failed_checks": r.failed,
                                        "rewrite": r.text if not r.failed else None}, ensure_ascii=False) + "\n")
    finally:
        backend.close()
    detail = ", ".join(f"{name} {n}" for name, n in failures.most_common()) or "none"
    print(f"held-out pass rate {passed}/{len(rows)} = {passed / len(rows):.1%}; failures per check: {detail}; "
          f"results in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="chat JSONL -> token + loss-mask datasets for data.sft_dir")
    b.add_argument("--input", nargs="+", required=True, help="JSONL with 'messages' (make_seed_pairs export)")
    b.add_argument("--tokenizer", required=True,
                   help="the model's directory (or a checkpoint's tokenizer/), with its chat template")
    b.add_argument("--out", required=True, help="directory to write")
    b.add_argument("--valid-fraction", type=float, default=0.02, help="conversations held out (default 0.02)")
    b.add_argument("--seed", type=int, default=0, help="which conversations are held out")
    b.add_argument("--seq-length", type=int, default=8192,
                   help="the training data.seq_length: a conversation longer than it + 1 tokens is skipped or "
                        "truncated (--too-long), as packing would drop it; 0 keeps all (default 8192)")
    b.add_argument("--too-long", choices=["skip", "truncate"], default="skip",
                   help="a conversation longer than --seq-length: leave it out (default) or cut it to fit")
    b.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("check", help="rewrite the held-out raw documents with a model and run the checks")
    c.add_argument("--data", required=True, help="the directory build wrote")
    c.add_argument("--pairs", required=True, help="the seed pairs (make_seed_pairs generate) holding the raw texts")
    c.add_argument("--model", required=True, help="the exported rewriter (or the served name for openai)")
    c.add_argument("--guidelines", required=True)
    c.add_argument("--backend", choices=["vllm", "hf", "openai"],
                   help="vllm (GPU), hf (transformers: CPU or GPU) or openai (a served model); "
                        "default: vllm where it is installed, else hf")
    c.add_argument("--out", help="results JSONL (default DATA/check.jsonl)")
    from native_megatron.alignment.config import RewriteConfig
    from native_megatron.alignment.validation import ValidationConfig

    add_config_help(c, [(RewriteConfig, "rewrite."), (ValidationConfig, "validate.")],
                    note="explained in docs/alignment.md")
    return p


# The exit status of each failure the user can act on; a ConfigError is 2.
EXIT_CODES = {(SFTDataError, OSError): 2, BackendUnavailable: 3}


@cli_main(exit_codes=EXIT_CODES)
def main(argv: list[str] | None = None) -> int:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    setup_logging("INFO")
    return cmd_build(args) if args.command == "build" else cmd_check(args, overrides)
