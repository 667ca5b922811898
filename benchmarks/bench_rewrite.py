#!/usr/bin/env python3
"""The rewrite stage against its engine: how busy a simulated vLLM engine stays, and what the client costs.

By default (``--backend sim``) the stage rewrites the shipped sample, repeated,
against a simulated continuous-batching engine on loopback
(tests/helpers/engine_sim.py: ``--slots`` sequences decode at once, each step
takes ``--step-ms`` whatever the batch, output length follows the document, a
queue beyond the slots), first with the default settings and then for a sweep
of windows (``rewrite.openai.window``). For each it prints the engine's busy
share in steady state (10% to 80% of its tokens) and over the whole run, output
tokens/s against the engine's limit, and the client's CPU-seconds per 1,000
documents (this process and its pool), with the target: at most a tenth of the
engine's time per document at ``--target-tps`` output tokens/s per GPU.

With ``--backend hf|vllm|openai`` it measures the stage's overhead over the bare
backend call instead: prompts/s through the tool vs ``backend.generate``, on the
same documents of the shipped sample, in the same run, with the same backend and
sampling: the bare call sends every prompt straight to ``backend.generate`` in
batches; the tool runs the whole stage (reading the shard, chunking, prompting,
validation, retries off, writing shards and manifests atomically). The ratio is
the tool's cost; 1.00x means none.

    python -m benchmarks.bench_rewrite                              # simulated engine, defaults + window sweep
    python -m benchmarks.bench_rewrite --backend hf                 # tiny local model, hf backend (CPU)
    python -m benchmarks.bench_rewrite --backend vllm --model /models/rewriter          # GPU
    python -m benchmarks.bench_rewrite --backend openai --model NAME --base-url http://h:8000/v1

Run it from the repository root, as a module: the simulated engine is tests/helpers/engine_sim.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from native_megatron.alignment.backends import build_backend
from native_megatron.alignment.config import RewriteConfig
from native_megatron.alignment.guidelines import load_guidelines
from native_megatron.alignment.rewrite import run_rewrite
from native_megatron.alignment.tiny_model import make_tiny_chat_model
from native_megatron.alignment.validation import ValidationConfig
from native_megatron.utils.config import load_config
from native_megatron.utils.logging import setup_logging

ROOT = Path(__file__).resolve().parents[1]


def sample_rows(n: int) -> list[dict]:
    """``n`` documents of the shipped sample, repeated, each with its own id."""
    with open(ROOT / "examples" / "data" / "sample_ar.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    return [{"id": f"d{i}", "file": "sample", "line": i + 1, "text": docs[i % len(docs)]} for i in range(n)]


def write_shard(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def cpu_seconds() -> float:
    """CPU of this process and of its reaped children (the stage's pool, once shut down)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def simulate(args, tmp: Path, window: int | None, docs: int) -> dict:
    """One rewrite of ``docs`` documents against a fresh simulated engine; what it measured."""
    from tests.helpers.engine_sim import SimulatedEngine, busy_share

    shard = write_shard(tmp / f"in-{window}.jsonl", sample_rows(docs))
    overrides = ["--backend=openai", "--model=sim", f"--guidelines={args.guidelines}", "--on_failure=keep_raw",
                 "--sampling.temperature=0", "--min_rewritten_fraction=0"]
    if window is not None:
        overrides.append(f"--openai.window={window}")
    if args.client_workers is not None:
        overrides.append(f"--client_workers={args.client_workers}")
    with SimulatedEngine(args.slots, args.step_ms / 1000) as engine:
        cfg = load_config(RewriteConfig, overrides=overrides + [f"--openai.base_urls=[{engine.url}]"])
        cpu0, start = cpu_seconds(), time.monotonic()
        result = run_rewrite([shard], tmp / f"out-{window}", cfg, ValidationConfig(), show_progress=False)
        wall, cpu = time.monotonic() - start, cpu_seconds() - cpu0
        st = engine.stats()
    hist = st["history"]
    total, acc, lo, hi = st["tokens"], 0, None, None
    for t, n in hist:
        acc += n
        if lo is None and acc >= 0.1 * total:
            lo = t
        if hi is None and acc >= 0.8 * total:
            hi = t
    tokens = result.stats["completion_tokens"]
    return {"window": window or "default", "docs": docs, "wall_s": wall,
            "busy_steady": busy_share(hist, st["slots"], st["step_s"], lo, hi),
            "busy_all": busy_share(hist, st["slots"], st["step_s"], hist[0][0], hist[-1][0] + st["step_s"]),
            "tokens_per_s": tokens / wall, "limit": engine.limit_tokens_per_s,
            "cpu_per_1000": 1000 * cpu / docs, "tokens_per_doc": tokens / docs}


def main_simulated(args) -> int:
    setup_logging("WARNING")
    import os

    load = os.getloadavg()
    print(f"simulated engine: {args.slots} slots, {args.step_ms:g} ms per decode step "
          f"(limit {args.slots / args.step_ms * 1000:,.0f} output tokens/s); load average before: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'window/server':>13} {'docs':>6} {'busy steady':>12} {'busy all':>9} {'out tok/s':>10} "
          f"{'of limit':>9} {'client CPU-s/1k docs':>21}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_rewrite_") as tmp:
        runs = [(None, args.docs)] + [(w, max(96, 3 * w)) for w in args.windows]
        for window, docs in runs:
            r = simulate(args, Path(tmp), window, docs)
            rows.append(r)
            print(f"{r['window']:>13} {r['docs']:>6} {100 * r['busy_steady']:11.1f}% {100 * r['busy_all']:8.1f}% "
                  f"{r['tokens_per_s']:10,.0f} {100 * r['tokens_per_s'] / r['limit']:8.1f}% "
                  f"{r['cpu_per_1000']:21.2f}", flush=True)
    d = rows[0]
    budget = 1000 * d["tokens_per_doc"] / args.target_tps / 10
    ok_busy, ok_cpu = d["busy_steady"] >= 0.9, d["cpu_per_1000"] <= budget
    print(f"defaults: engine {100 * d['busy_steady']:.1f}% busy in steady state (target >= 90%: "
          f"{'met' if ok_busy else 'NOT met'}); client {d['cpu_per_1000']:.2f} CPU-s per 1,000 documents of "
          f"{d['tokens_per_doc']:.0f} output tokens, budget {budget:.2f} (a tenth of the engine's time at "
          f"{args.target_tps:,.0f} tokens/s: {'met' if ok_cpu else 'NOT met'}); load average after: "
          f"{os.getloadavg()[0]:.2f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["sim", "hf", "vllm", "openai"], default="sim")
    p.add_argument("--model", help="default: a tiny random model made on the spot (hf)")
    p.add_argument("--base-url", nargs="+", default=["http://127.0.0.1:8000/v1"])
    p.add_argument("--docs", type=int, default=None, help="default: 1024 (sim), 64 (others)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--slots", type=int, default=256, help="sim: sequences the engine decodes at once")
    p.add_argument("--step-ms", type=float, default=20.0, help="sim: one decode step, whatever the batch")
    p.add_argument("--windows", type=int, nargs="*", default=[32, 128, 256, 512], help="sim: the sweep")
    p.add_argument("--client-workers", type=int, default=None, help="sim: rewrite.client_workers")
    p.add_argument("--target-tps", type=float, default=6000.0,
                   help="sim: output tokens/s of one GPU for the client's CPU budget")
    p.add_argument("--guidelines", default=str(ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"))
    args = p.parse_args()
    if args.backend == "sim":
        args.docs = args.docs or 1024
        return main_simulated(args)
    args.docs = args.docs or 64
    return main_overhead(args)


def main_overhead(args) -> int:

    setup_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench_rewrite_") as tmp:
        tmp = Path(tmp)
        rows = []
        with open(ROOT / "examples" / "data" / "sample_ar.jsonl", encoding="utf-8") as f:
            for i, line in enumerate(f):
                doc = json.loads(line)
                rows.append({"id": doc.get("id", str(i)), "file": "sample", "line": i + 1, "text": doc["text"]})
        rows = (rows * (args.docs // len(rows) + 1))[: args.docs]
        shard = tmp / "shard-00000.jsonl"
        shard.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        model = args.model or str(make_tiny_chat_model(tmp / "tiny", [r["text"] for r in rows], vocab_size=600))
        cfg = load_config(RewriteConfig, overrides=[
            f"--backend={args.backend}", f"--model={model}", f"--guidelines={args.guidelines}",
            f"--sampling.max_new_tokens={args.max_new_tokens}", "--on_failure=keep_raw",
            f"--batch_size={args.batch_size}", f"--openai.base_urls={args.base_url}", "--sampling.temperature=0"])
        guidelines = load_guidelines(cfg.guidelines)
        backend = build_backend(cfg)
        try:
            backend.generate([guidelines.messages(rows[0]["text"])], cfg.sampling)   # warm-up
            requests = [guidelines.messages(r["text"]) for r in rows]
            start = time.perf_counter()
            for i in range(0, len(requests), args.batch_size):
                backend.generate(requests[i:i + args.batch_size], cfg.sampling)
            bare = time.perf_counter() - start
            start = time.perf_counter()
            result = run_rewrite([str(shard)], tmp / "out", cfg, ValidationConfig(), show_progress=False,
                                 backend=backend)
            tool = time.perf_counter() - start
        finally:
            backend.close()
    prompts = result.stats["documents"]
    print(f"backend {args.backend}, model {model}, {prompts} documents, max_new_tokens {args.max_new_tokens}")
    print(f"{'path':32} {'seconds':>9} {'prompts/s':>10}")
    print(f"{'bare backend.generate':32} {bare:9.2f} {len(rows) / bare:10.2f}")
    print(f"{'rewrite stage (tool)':32} {tool:9.2f} {prompts / tool:10.2f}")
    print(f"tool / bare throughput: {(prompts / tool) / (len(rows) / bare):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
