#!/usr/bin/env python3
"""Train a sentencepiece tokenizer on a JSONL/Parquet corpus: ``nm-train-tokenizer``.

    python tools/train_tokenizer.py --input examples/data/sample_ar.jsonl \\
        --model-prefix examples/tokenizer/sample_ar --vocab-size 8000

The command line lives in native_megatron/cli/train_tokenizer.py.
"""

import sys

from native_megatron.cli.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
