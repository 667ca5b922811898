#!/usr/bin/env python3
"""Pre-train (or continue pre-training) a Llama-style Arabic model: ``nm-pretrain``, kept for torchrun.

    torchrun --nproc-per-node 4 pretrain_arabic.py --config examples/configs/tiny_cpu.yaml \\
        --parallel.tensor=2 --parallel.pipeline=2

The command line lives in native_megatron/cli/pretrain.py; ``--help`` lists every setting.
"""

import sys

from native_megatron.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
