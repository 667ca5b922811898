"""Near-dedup, side by side on one generated corpus with planted duplicates of known Jaccard similarity.

    python -m benchmarks.bench_dedup                  # 1M documents (minutes to hours on few cores)
    python -m benchmarks.bench_dedup --docs 20000     # quick

Run it from the repository root, as a module: it generates its corpus with tests/helpers/planted_corpus.py.

Methods: the in-memory path (fingerprint + one Deduplicator, one process); the
four staged tasks (native_megatron.data.neardup) with 1 task and with --tasks
tasks; datatrove's MinHash pipeline (if it imports) with the same word 5-grams
(it is fed the same normalised words), bands and rows. Every task runs as its
own process, so its peak RSS and CPU time are its own (os.wait4). Reports
recall for planted pairs at Jaccard >= 0.8 (and per band of similarity),
precision against pairs at >= threshold, documents/s per core per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from native_megatron.data.dedup import DedupConfig, lsh_bands_rows, normalize_for_match

ROOT = Path(__file__).resolve().parents[1]

PY = sys.executable
# Children run as a module from the repository root (spawn_all's cwd), so tests.helpers imports.
SELF = [PY, "-m", "benchmarks.bench_dedup"]
CLI = [PY, "-m", "native_megatron.cli.dedup"]


def spawn_all(commands: list[list[str]], parallel: int) -> dict:
    """Run commands, ``parallel`` at a time; wall seconds, CPU seconds summed, the largest peak RSS."""
    start, cpu, rss, pending, running = time.monotonic(), 0.0, 0, list(commands), {}
    while pending or running:
        while pending and len(running) < parallel:
            cmd = pending.pop(0)
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            running[proc.pid] = (proc, cmd)
        pid, status, usage = os.wait4(-1, 0)
        proc, cmd = running.pop(pid)
        if status != 0:
            sys.exit(f"failed ({status}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-3000:]}")
        proc.stderr.close()
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss)  # KiB on Linux
    return {"wall_s": round(time.monotonic() - start, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss / 1024, 1)}


def child_inmemory(files: list[str], out: str, config: DedupConfig) -> None:
    from native_megatron.data.dedup import fingerprint
    from tests.helpers.inmemory_dedup import Deduplicator

    dedup, dropped = Deduplicator(config), {}
    for path in files:
        for line in open(path, encoding="utf-8"):
            d = json.loads(line)
            found = dedup.check(d["id"], fingerprint(d["text"], config))
            if found is not None:
                dropped[d["id"]] = found[1]
    Path(out).write_text(json.dumps(dropped))


def child_datatrove(stage: str, task: int, tasks: int, work: str, bands: int, rows: int) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Spaces(WordTokenizer):  # the text is already our normalised words: no spacy needed
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    w = Path(work)
    # xxhash (the default) fails on str with the xxhash wheel pip resolves here; sha1 is datatrove's other choice.
    mc = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                       hash_config=HashConfig(precision=64, hash_fc="sha1"))
    reader = JsonlReader(str(w / "input"), glob_pattern="*.jsonl")
    steps = {
        "signatures": [reader, MinhashDedupSignature(str(w / "sigs"), config=mc, language=Spaces())],
        "buckets": [MinhashDedupBuckets(str(w / "sigs"), str(w / "buckets"), config=mc)],
        "cluster": [MinhashDedupCluster(str(w / "buckets"), str(w / "remove"), config=mc)],
        "filter": [reader, MinhashDedupFilter(str(w / "remove"), exclusion_writer=JsonlWriter(str(w / "removed")))],
    }
    LocalPipelineExecutor(steps[stage], tasks=tasks, workers=1, local_tasks=1, local_rank_offset=task,
                          logging_dir=str(w / f"logs-{stage}"), skip_completed=False).run()


def score(dropped: dict[str, str | None], planted, threshold: float) -> dict:
    from tests.helpers.planted_corpus import truly_dropped

    pos = {f"doc-{i:07d}": i for i in range(len(planted.ids))}
    got = {pos[d] for d in dropped}
    want_08, want_thr = truly_dropped(planted, 0.8), truly_dropped(planted, threshold)
    best: dict[int, float] = {}
    for (a, b), j in planted.jaccard.items():
        best[b] = max(best.get(b, 0.0), j)  # b comes later in input order
    bins = {}
    for lo in (0.5, 0.6, 0.7, 0.8, 0.9):
        members = [p for p, j in best.items() if lo <= j < lo + 0.1 or (lo == 0.9 and j >= 1.0)]
        bins[f"{lo:.1f}-{lo + 0.1:.1f}"] = round(sum(p in got for p in members) / max(1, len(members)), 4)
    planted_dups = truly_dropped(planted, 0.5)  # every planted variant and copy (J >= 0.5 by construction)
    return {"dropped": len(got), "recall_at_0.8": round(len(got & want_08) / max(1, len(want_08)), 4),
            "precision": round(len(got & planted_dups) / max(1, len(got)), 4),
            "precision_at_threshold": round(len(got & want_thr) / max(1, len(got)), 4),
            # Which copy is kept aside: drops inside planted groups, and groups whose first copy survives.
            "precision_any_copy": round(len(got & set().union(*planted.groups)) / max(1, len(got)), 4),
            "first_copy_kept": round(sum(min(g) not in got for g in planted.groups) / max(1, len(planted.groups)), 4),
            "drop_rate_by_jaccard": bins}


def staged(files: list[str], work: Path, tasks: int, workers: int, overrides: list[str]) -> tuple[dict, dict]:
    stages = {}
    for stage, count in (("signatures", tasks), ("merge", tasks), ("clusters", 1), ("filter", tasks)):
        inputs = ["--input", *files] if stage in ("signatures", "filter") else []
        cmds = [CLI + [stage, *inputs, "--run-dir", str(work), "--task", str(t), "--tasks", str(count), *overrides]
                for t in range(count)]
        stages[stage] = spawn_all(cmds, workers)
    dropped = {}
    for part in sorted((work / "manifest").glob("part-*.jsonl")):
        for line in part.open(encoding="utf-8"):
            r = json.loads(line)
            if r["status"] == "dropped":
                dropped[r["id"]] = r.get("duplicate_of")
    return stages, dropped


def per_core(stages: dict, docs: int) -> dict:
    return {s: {**m, "docs_per_core_s": round(docs / max(m["cpu_s"], 1e-9), 1)} for s, m in stages.items()}


def extra_args(args) -> list[str]:
    return (["--bands", str(args.bands), "--rows", str(args.rows)] if args.bands else []) + \
        ["--threshold", str(args.threshold)]


def child_generate(docs: int, files: int, work: Path, config: DedupConfig) -> None:
    from tests.helpers.planted_corpus import Planted, generate, write_jsonl

    planted = generate(docs, seed=0, config=config)
    write_jsonl(planted, work / "input", files)
    # datatrove gets the same word 5-grams as ours: our normalised words, space-separated.
    write_jsonl(Planted([" ".join(normalize_for_match(t)) for t in planted.texts], planted.ids),
                work / "datatrove" / "input", files)
    truth = {"ids": planted.ids, "groups": planted.groups,
             "jaccard": [[a, b, j] for (a, b), j in planted.jaccard.items()]}
    (work / "truth.json").write_text(json.dumps(truth))


def load_truth(work: Path):
    from tests.helpers.planted_corpus import Planted

    t = json.loads((work / "truth.json").read_text())
    return Planted([], t["ids"], t["groups"], {(a, b): j for a, b, j in t["jaccard"]})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1), help="processes at once")
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--bands", type=int)
    p.add_argument("--rows", type=int)
    p.add_argument("--work", default="/tmp/bench_dedup")
    p.add_argument("--no-datatrove", action="store_true")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    config = DedupConfig(threshold=args.threshold, bands=args.bands, rows=args.rows)
    if args.child:
        kind, *rest = args.child
        if kind == "generate":
            child_generate(int(rest[0]), int(rest[1]), Path(rest[2]), config)
        elif kind == "inmemory":
            child_inmemory(rest[1:], rest[0], config)
        else:
            child_datatrove(rest[0], int(rest[1]), int(rest[2]), rest[3], int(rest[4]), int(rest[5]))
        return 0
    import shutil

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.monotonic()
    # The corpus is made in a child: a task's peak RSS counts its parent's at the fork, so this one stays small.
    spawn_all([[*SELF, *extra_args(args), "--child", "generate", str(args.docs), str(args.files),
                str(work)]], 1)
    planted = load_truth(work)
    files = sorted(str(p) for p in (work / "input").glob("*.jsonl"))
    n = len(planted.ids)
    bands, rows = lsh_bands_rows(config)
    print(f"corpus: {n} documents in {len(files)} files, {len(planted.groups)} planted groups, "
          f"bands x rows {bands} x {rows}, threshold {args.threshold} ({time.monotonic() - t0:.0f}s)", flush=True)
    overrides = [f"--dedup.threshold={args.threshold}"] + \
        ([f"--dedup.bands={args.bands}", f"--dedup.rows={args.rows}"] if args.bands else [])
    extra = extra_args(args)
    results = {"documents": n, "bands_rows": [bands, rows], "threshold": args.threshold}

    out = work / "inmemory.json"
    m = spawn_all([[*SELF, *extra, "--child", "inmemory", str(out), *files]], 1)
    results["in_memory"] = {**per_core({"all": m}, n)["all"], **score(json.loads(out.read_text()), planted,
                                                                       args.threshold)}
    print("in-memory:", json.dumps(results["in_memory"]), flush=True)
    for tasks in sorted({1, args.tasks}):
        stages, dropped = staged(files, work / f"staged-{tasks}", tasks, args.workers, overrides)
        results[f"staged_{tasks}_tasks"] = {"stages": per_core(stages, n), **score(dropped, planted, args.threshold)}
        print(f"staged, {tasks} tasks:", json.dumps(results[f"staged_{tasks}_tasks"]), flush=True)
    if not args.no_datatrove:
        results["datatrove"] = run_datatrove(planted, work / "datatrove", args, bands, rows, extra)
        print("datatrove:", json.dumps(results["datatrove"]), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'results.json'}")
    return 0


def run_datatrove(planted, work: Path, args, bands: int, rows: int, extra: list[str]) -> dict:
    try:
        import datatrove  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"datatrove does not import: {exc}"}
    n, stages = len(planted.ids), {}
    for stage, count in (("signatures", args.tasks), ("buckets", bands), ("cluster", 1), ("filter", args.tasks)):
        cmds = [[*SELF, *extra, "--child", "datatrove", stage, str(t), str(count), str(work), str(bands),
                 str(rows)] for t in range(count)]
        stages[stage] = spawn_all(cmds, args.workers)
    dropped = {}
    for path in (work / "removed").glob("*.jsonl*"):
        import gzip

        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            for line in f:
                dropped[json.loads(line)["id"]] = None
    return {"stages": per_core(stages, n), **score(dropped, planted, args.threshold)}


if __name__ == "__main__":
    sys.exit(main())
