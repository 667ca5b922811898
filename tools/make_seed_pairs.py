#!/usr/bin/env python3
"""Make (raw, rewritten) seed pairs with a strong LLM and export them as SFT data: ``nm-seed-pairs``.

    python tools/make_seed_pairs.py generate --input out/arabic_work/prepare/shard-*.jsonl \\
        --sample 2000 --model gpt-4o --base-url https://api.openai.com/v1 \\
        --guidelines examples/guidelines/native_alignment_ar.yaml --out seed/pairs.jsonl
    python tools/make_seed_pairs.py export --pairs seed/pairs.jsonl \\
        --guidelines examples/guidelines/native_alignment_ar.yaml --out seed/sft.jsonl

The command line lives in native_megatron/cli/seed_pairs.py; see docs/alignment.md.
"""

import sys

from native_megatron.cli.seed_pairs import main

if __name__ == "__main__":
    sys.exit(main())
