"""Staged dedup from the command line: one stage task (a SLURM array task), or every stage locally.

    python -m native_megatron.cli.dedup all --input data/*.jsonl --run-dir out/dedup --tasks 8 --workers 8
    python -m native_megatron.cli.dedup signatures --input ... --run-dir ... --tasks 64   # task from SLURM

Settings: ``--dedup.key=value`` as in preprocessing (``dedup.band_ranges`` and
``dedup.exact_ranges`` split stage 2 into more units) and ``--stages.key=value``
(window_records, max_candidates); ``--against PREV_RUN_DIR`` (``dedup.against``)
deduplicates against an earlier run's kept documents.
"""

from __future__ import annotations

import argparse
import json
import sys

from native_megatron.cli import cli_main
from native_megatron.utils.config import ConfigError, load_config, split_overrides

EXIT_STATUS = """exit status:
  0  done (finished units of a rerun are reused)
  2  a setup mistake, or an earlier stage is unfinished: one line saying which"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m native_megatron.cli.dedup",
                                description=__doc__.split("\n\n")[0], epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["signatures", "merge", "clusters", "filter", "all"])
    p.add_argument("--input", nargs="+", default=[], metavar="FILE",
                   help="JSONL (.gz/.bz2/.zst) or Parquet files, directories or globs (signatures, filter, all)")
    p.add_argument("--run-dir", required=True, help="where the stages write (shared by every task)")
    p.add_argument("--tasks", type=int, help="tasks in this stage (default: the SLURM array's size, else 1)")
    p.add_argument("--task", type=int, help="this task's index (default: SLURM_ARRAY_TASK_ID's index, else "
                                            "every task here)")
    p.add_argument("--workers", type=int, default=1, help="processes: fingerprinting per task; tasks for 'all'")
    p.add_argument("--against", default="", metavar="PREV_RUN_DIR", help="an earlier run to dedup against")
    p.add_argument("--text-key", default="text")
    p.add_argument("--id-key", default="id")
    return p


@cli_main(exit_codes={(OSError, ValueError): 2})
def main(argv: list[str] | None = None) -> int:
    from native_megatron.utils.logging import setup_logging

    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    setup_logging("INFO")
    from native_megatron.data.executor import Share
    from native_megatron.data.neardup.run import DedupRunConfig, InputSpec, run_local, run_task
    from native_megatron.data.readers import expand_inputs

    cfg = load_config(DedupRunConfig, overrides=overrides,
                      base={"dedup.against": args.against} if args.against else None)
    files = expand_inputs(args.input) if args.input else []
    if args.stage in ("signatures", "filter", "all") and not files:
        raise ConfigError(f"the {args.stage} stage reads the corpus: pass --input FILES")
    spec = InputSpec(files, args.text_key, args.id_key)
    if args.stage == "all":
        result = run_local(spec, cfg, args.run_dir, args.tasks or 1, args.workers)
    else:
        share = Share.of(args.task, args.tasks)
        done = run_task(args.stage, spec, cfg, args.run_dir, share.task, args.tasks or share.num_tasks, args.workers)
        result = {"stage": args.stage, "units": [{"name": d.name, "reused": d.reused, **d.record} for d in done]}
    print(json.dumps(result, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
