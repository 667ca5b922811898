"""Write a review page for a rewrite job: what the rewriter did to each document, and why it was kept or not.

    python tools/review_rewrites.py --prefix runs/demo/data/sample_ar_aligned --out review.html
    python tools/review_rewrites.py --prefix out/arabic_aligned --out review.html --sample 500 --seed 1

PREFIX is the job's --output-prefix. A finished job is read from PREFIX_rewrites.jsonl and
PREFIX_manifest.jsonl; a running one from the shard files under PREFIX_work/, so the page can be
made while the rewrite is still going. The page is one HTML file (figures embedded, no server);
open it in any browser. docs/alignment.md shows how to use it to tune guidelines and thresholds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from native_megatron.cli import cli_main
from native_megatron.data.readers import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", required=True, help="the job's --output-prefix")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--sample", type=int, default=200,
                   help="documents shown (default 200); at least one per filter when there is one")
    p.add_argument("--seed", type=int, default=0, help="picks the sample (default 0)")
    return p


@cli_main(exit_codes={InputError: 2, PermissionError: 2})
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sample < 1:
        raise InputError("--sample must be at least 1")
    from native_megatron.alignment.review import input_bytes, load_review
    from native_megatron.alignment.review_page import pyplot, write_page
    from native_megatron.utils.io import Progress, check_writable_dir
    from native_megatron.utils.logging import setup_logging

    setup_logging("INFO")
    # before the job's files are read, which can take long
    check_writable_dir(Path(args.out).resolve().parent)
    pyplot()
    # A real job's files are many GB and read at some MB/s: show how far it has got.
    with Progress(round(input_bytes(args.prefix) / 1e6, 1), "review: reading", unit="MB") as bar:
        r = load_review(args.prefix, args.sample, args.seed, progress=lambda n: bar.update(n / 1e6))
    write_page(r, args.out)
    state = "running job" if r.running else "finished job"
    print(f"{args.out}: {len(r.sample)} of {r.documents} documents shown ({r.attempts} attempts, "
          f"{r.first_pass + r.retry_pass} passed in the end) from the {state} at {args.prefix}")
    return 0
