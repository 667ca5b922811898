#!/usr/bin/env python3
"""Write a review page for a rewrite job (raw vs rewrite, checks, figures): ``nm-review``.

    python tools/review_rewrites.py --prefix runs/demo/data/sample_ar_aligned --out review.html

The command line lives in native_megatron/cli/review.py; see docs/alignment.md.
"""

import sys

from native_megatron.cli.review import main

if __name__ == "__main__":
    sys.exit(main())
