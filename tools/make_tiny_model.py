#!/usr/bin/env python3
"""Make a tiny random chat model for demos and tests: ``nm-tiny-model``.

    python tools/make_tiny_model.py --out runs/demo/tiny_rewriter --corpus examples/data/sample_ar.jsonl

The command line lives in native_megatron/cli/tiny_model.py.
"""

import sys

from native_megatron.cli.tiny_model import main

if __name__ == "__main__":
    sys.exit(main())
