#!/usr/bin/env python3
"""Score checkpoints on Arabic knowledge and alignment, and compare them in one report: ``nm-evaluate``.

    python tools/evaluate.py --model raw=runs/raw/checkpoints aligned=runs/aligned/checkpoints \\
        --tasks arabic_mmlu,exams,acva,alghafa,alignment --data-dir /data/arabic_eval --shots 5

The command line lives in native_megatron/cli/evaluate.py; see docs/evaluation.md.
"""

import sys

from native_megatron.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
