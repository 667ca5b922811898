#!/usr/bin/env python3
"""Raw Arabic corpus -> natively aligned Megatron indexed dataset: ``nm-preprocess``.

    python tools/preprocess_aligned.py --input data/*.jsonl.zst --output-prefix out/arabic \\
        --tokenizer /models/Meta-Llama-3-8B --rewrite vllm --model /models/rewriter \\
        --guidelines examples/guidelines/native_alignment_ar.yaml

The command line lives in native_megatron/cli/preprocess.py; ``--help`` lists every setting.
"""

import sys

from native_megatron.cli.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
