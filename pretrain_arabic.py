#!/usr/bin/env python3
"""Pre-train (or continue pre-training) a Llama-style Arabic model with megatron-core.

    torchrun --nproc-per-node 4 pretrain_arabic.py --config examples/configs/tiny_cpu.yaml \\
        --parallel.tensor=2 --parallel.pipeline=2

Settings come from the YAML file and ``--section.key=value`` overrides (see
docs/training.md). A run resumes from the newest checkpoint in its checkpoint
directory; SIGTERM or SIGUSR1 saves a checkpoint and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys

from native_megatron.training.config import TrainConfig
from native_megatron.utils.config import ConfigError, load_config, split_overrides
from native_megatron.utils.logging import setup_logging

logger = logging.getLogger("pretrain_arabic")


def main(argv: list[str] | None = None) -> int:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Any setting can be given as --section.key=value.")
    parser.add_argument("--config", required=True, metavar="YAML", help="training settings")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(rest)
    setup_logging(args.log_level)
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from native_megatron.training.distributed import destroy_distributed
    from native_megatron.training.trainer import Trainer

    trainer = None
    try:
        trainer = Trainer(cfg)
        result = trainer.train()
        logger.info("done at step %d%s; checkpoint: %s", result.final_step,
                    " (stopped by signal)" if result.stopped_by_signal else "", result.checkpoint)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
