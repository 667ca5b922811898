#!/usr/bin/env python3
"""Each step of the preprocessing pipeline as a SLURM array runs it: time and memory per task.

Generates an Arabic corpus (the sample's sentences recombined, as
bench_preprocess.py does) in ``--files`` files, then runs
``tools/preprocess_aligned.py --rewrite none`` step by step, one process per
array task with the ``SLURM_ARRAY_TASK_*`` variables set, one worker each:
clean (``--tasks`` tasks), merge (``--merge-tasks``), clusters (1), filter
(``--tasks``), tokenize (1). For each step it prints the wall seconds of the
slowest task, the CPU seconds of all tasks, documents per CPU second (per core)
and the peak RSS of the largest task (``wait4``'s ``ru_maxrss``: the process's
own). The same corpus is run once as one plain command; the script checks that
the array's .bin/.idx and manifest are byte-identical to it.

    python benchmarks/bench_prepare_steps.py --size-mb 50 --files 8 --tasks 4 --merge-tasks 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A sibling script: Python puts the running script's directory first on the path.
from bench_preprocess import make_corpus

ROOT = Path(__file__).resolve().parents[1]

TOOL = [sys.executable, str(ROOT / "tools" / "preprocess_aligned.py")]


def run(cmd: list[str], env: dict) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def split_files(corpus: Path, files: int, out: Path) -> list[str]:
    lines = corpus.read_bytes().splitlines(keepends=True)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        path = out / f"part-{f:03d}.jsonl"
        path.write_bytes(b"".join(lines[f * len(lines) // files:(f + 1) * len(lines) // files]))
        paths.append(str(path))
    return paths


def digest(prefix: str) -> str:
    h = hashlib.sha256()
    for suffix in ("_text_document.bin", "_text_document.idx", "_manifest.jsonl"):
        h.update(Path(prefix + suffix).read_bytes())
    return h.hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=50.0)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--merge-tasks", type=int, default=4)
    p.add_argument("--tokenizer", default=str(ROOT / "examples" / "tokenizer" / "sample_ar.model"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_steps_") as tmp:
        tmp = Path(tmp)
        corpus, _ = make_corpus(tmp, args.size_mb, 10**9, args.seed)
        files = split_files(corpus, args.files, tmp / "input")
        docs = sum(1 for _ in open(corpus, "rb"))
        print(f"corpus: {corpus.stat().st_size / 1e6:.1f} MB, {docs:,} documents in {len(files)} files; "
              f"{args.tasks} prepare tasks, {args.merge_tasks} merge tasks, one worker each")
        common = ["--rewrite", "none", "--no-progress", "--log-level", "WARNING", "--input", *files,
                  "--tokenizer", args.tokenizer, "--workers", "1"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        plain = str(tmp / "plain" / "p")
        wall, cpu, rss = run(TOOL + common + ["--output-prefix", plain], env)
        print(f"one plain command (1 task): {wall:.1f}s wall, {cpu:.1f} CPU s, peak RSS {rss:.0f} MB")

        prefix = str(tmp / "array" / "p")
        steps = [("clean", args.tasks), ("merge", args.merge_tasks), ("clusters", 1), ("filter", args.tasks),
                 ("tokenize", 1)]
        rows = []
        for step, count in steps:
            results = []
            for index in range(count):
                task_env = dict(env, SLURM_ARRAY_TASK_ID=str(index), SLURM_ARRAY_TASK_COUNT=str(count),
                                SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX=str(count - 1))
                extra = ["--run.tasks", str(args.tasks)] if step == "clean" else []
                results.append(run(TOOL + common + ["--output-prefix", prefix, "--stage", step, *extra], task_env))
            rows.append((step, count, max(r[0] for r in results), sum(r[1] for r in results),
                         max(r[2] for r in results)))
        print(f"\n{'step':10} {'tasks':>5} {'wall s (slowest)':>17} {'CPU s (all)':>12} {'docs/s/core':>12} "
              f"{'peak RSS MB':>12}")
        for step, count, wall, cpu, rss in rows:
            print(f"{step:10} {count:5} {wall:17.2f} {cpu:12.2f} {docs / max(cpu, 1e-9):12,.0f} {rss:12.0f}")
        stats = json.loads(Path(prefix + "_stats.json").read_text())
        print(f"\nkept {stats['documents_by_status'].get('kept', 0):,} of {docs:,}; dropped "
              + ", ".join(f"{k} {v}" for k, v in stats["dropped_by_reason"].items()))
        print("(each process includes ~1 s of interpreter and imports; filter and tokenize import megatron-core)")
        same = digest(plain) == digest(prefix)
        print(f"array outputs byte-identical to the plain command's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
