#!/usr/bin/env python3
"""Plan a training run before queueing it (layout, memory per GPU, step time): ``nm-plan``.

    python tools/plan.py --config examples/configs/llama3_8b.yaml --nodes 4 --gpus-per-node 8 --gpu h100

The command line lives in native_megatron/cli/plan.py; ``--help`` lists every setting.
"""

import sys

from native_megatron.cli.plan import main

if __name__ == "__main__":
    sys.exit(main())
