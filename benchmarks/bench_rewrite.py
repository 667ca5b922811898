#!/usr/bin/env python3
"""Overhead of the rewrite stage over its backend: prompts/s through the tool vs the bare backend call.

Both measure the same documents of the shipped sample, in the same run, with
the same backend and sampling: the bare call sends every prompt straight to
``backend.generate`` in batches; the tool runs the whole stage (reading the
shard, chunking, prompting, validation, retries off, writing shards and
manifests atomically). The ratio is the tool's cost; 1.00x means none.

    python benchmarks/bench_rewrite.py                              # tiny local model, hf backend (CPU)
    python benchmarks/bench_rewrite.py --backend vllm --model /models/rewriter          # GPU
    python benchmarks/bench_rewrite.py --backend openai --model NAME --base-url http://h:8000/v1
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["hf", "vllm", "openai"], default="hf")
    p.add_argument("--model", help="default: a tiny random model made on the spot (hf)")
    p.add_argument("--base-url", nargs="+", default=["http://127.0.0.1:8000/v1"])
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--guidelines", default=str(ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"))
    args = p.parse_args()
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
