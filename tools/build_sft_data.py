#!/usr/bin/env python3
"""Build chat SFT data for the rewriter, and check a trained rewriter on the held-out pairs: ``nm-sft-data``.

    python tools/build_sft_data.py build --input seed/sft.jsonl --tokenizer /models/Qwen2.5-3B-Instruct \\
        --out seed/sft_data
    python tools/build_sft_data.py check --data seed/sft_data --pairs seed/pairs.jsonl --model models/rewriter \\
        --guidelines examples/guidelines/native_alignment_ar.yaml

The command line lives in native_megatron/cli/sft_data.py; see docs/training.md (SFT).
"""

import sys

from native_megatron.cli.sft_data import main

if __name__ == "__main__":
    sys.exit(main())
