"""Pre-train (or continue pre-training) a Llama-style Arabic model with megatron-core.

    torchrun --nproc-per-node 4 pretrain_arabic.py --config examples/configs/tiny_cpu.yaml \\
        --parallel.tensor=2 --parallel.pipeline=2

Settings come from the YAML file and ``--section.key=value`` overrides (see
docs/training.md). A run resumes from the newest checkpoint in its checkpoint
directory (the newest whose files are whole, whatever ``latest`` says); SIGTERM,
SIGUSR1 or Ctrl-C saves a checkpoint and exits 0, a second Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from native_megatron.cli import add_config_help, cli_main, print_config
from native_megatron.training.config import TrainConfig
from native_megatron.utils.config import ConfigError, given_keys, load_config, split_overrides, top_level_keys
from native_megatron.utils.logging import setup_logging

logger = logging.getLogger("pretrain_arabic")

# The config sections set by --section.key=value: (dataclass, key prefix).
SETTINGS = [(TrainConfig, "")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, metavar="YAML", help="training settings")
    parser.add_argument("--log-level", default="INFO")
    add_config_help(parser, SETTINGS, note="explained in docs/training.md")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv, top_level_keys(TrainConfig))
    args = build_parser().parse_args(rest)
    setup_logging(args.log_level)
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
    except ConfigError:
        if int(os.environ.get("RANK", "0")) != 0:
            return 2  # every rank reads the same files and fails alike: rank 0 prints the one line
        raise
    if args.print_config:
        return print_config(cfg)

    from native_megatron.training.distributed import destroy_distributed
    from native_megatron.training.trainer import Trainer

    trainer = None
    try:
        trainer = Trainer(cfg, given_keys(args.config, overrides))
        result = trainer.train()
        logger.info(result.summary())
    except ConfigError as exc:
        if getattr(exc, "shown_by_rank0", False):  # decided on rank 0, which prints it
            return 2
        raise
    except KeyboardInterrupt:  # before the trainer's handler was installed
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # runs before cli_main prints a ConfigError: every exit tears the process group down
        if trainer is not None:
            trainer.close()
        destroy_distributed()
    return 0
