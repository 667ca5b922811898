#!/usr/bin/env python3
"""Throughput of the preprocessing pipeline: tokenize+write against a plain baseline, and the
prepare stage with the language and quality filters on and off.

Generates a corpus of at least ``--size-mb`` MB of Arabic documents (sentences
of the shipped sample recombined at random, seeded), then measures, in the same
run and on the same input file:

- baseline: one process that, per line, parses the JSON, calls the tokenizer
  (its plain Python call), appends EOD and hands the id list to megatron-core's
  ``IndexedDatasetBuilder`` (what Megatron-LM's tools/preprocess_data.py does);
- ours: the pipeline's tokenize stage (``native_megatron.data.indexed``), with
  1 worker and with ``--workers`` workers, on shards of the same corpus.

Prints tokens/s per worker (per core) for each, the ratio to the baseline, and
checks that every variant wrote identical .bin/.idx bytes. Then the prepare stage
(parse, clean, filter, dedup) on the same file with one worker, documents/s, twice:
with the filters of the earlier releases only (length, Arabic script share), and
with everything on by default (mojibake repair, symbol lines, language ID, the
quality filters, PII redaction).

    python benchmarks/bench_preprocess.py --size-mb 50 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from native_megatron.data.cleaning import CleanConfig
from native_megatron.data.dedup import DedupConfig
from native_megatron.data.indexed import TokenizeSettings, dataset_prefix, run_tokenize
from native_megatron.data.prepare import PrepareSettings, run_prepare
from native_megatron.data.quality import QualityConfig
from native_megatron.data.tokenizer import load_tokenizer
from native_megatron.utils.logging import quiet_third_party, setup_logging

ROOT = Path(__file__).resolve().parents[1]

SENTENCE_END = re.compile(r"(?<=[.!؟?])\s+")


def sample_sentences(path: Path) -> list[str]:
    sentences = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                continue
            for para in text.split("\n"):
                sentences.extend(s for s in SENTENCE_END.split(para) if len(s) > 20)
    return sentences


def make_corpus(out_dir: Path, size_mb: float, shard_docs: int, seed: int) -> tuple[Path, list[str]]:
    """One input JSONL plus the same documents as tokenize-stage shards."""
    rng = random.Random(seed)
    sentences = sample_sentences(ROOT / "examples" / "data" / "sample_ar.jsonl")
    target = int(size_mb * 1e6)
    corpus = out_dir / "corpus.jsonl"
    shards, written, n = [], 0, 0
    shard_f = None
    with open(corpus, "w", encoding="utf-8") as f:
        while written < target:
            paras = ["".join(" " + s if i else s for i, s in enumerate(rng.sample(sentences, rng.randint(2, 6))))
                     for _ in range(rng.randint(1, 6))]
            text = "\n".join(paras)
            line = json.dumps({"id": f"b{n}", "file": str(corpus), "line": n + 1, "text": text},
                              ensure_ascii=False) + "\n"
            f.write(line)
            if n % shard_docs == 0:
                if shard_f:
                    shard_f.close()
                shards.append(str(out_dir / f"shard-{len(shards):05d}.jsonl"))
                shard_f = open(shards[-1], "w", encoding="utf-8")
            shard_f.write(line)
            written += len(line.encode("utf-8"))
            n += 1
    shard_f.close()
    return corpus, shards


def baseline(corpus: Path, tokenizer_path: str, out_prefix: str) -> tuple[int, float]:
    quiet_third_party()
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    tok = load_tokenizer(tokenizer_path)
    encode = tok.sp.encode_as_ids if hasattr(tok, "sp") else (lambda t: tok.tok.encode(t).ids)
    start = time.perf_counter()
    builder = IndexedDatasetBuilder(out_prefix + ".bin", dtype=DType.optimal_dtype(tok.vocab_size))
    tokens = 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            ids = encode(json.loads(line)["text"])
            ids.append(tok.eod_id)
            builder.add_document(ids, [len(ids)])
            tokens += len(ids)
    builder.finalize(out_prefix + ".idx")
    return tokens, time.perf_counter() - start


def ours(shards: list[str], tokenizer_path: str, work: Path, out_prefix: str, workers: int) -> dict:
    settings = TokenizeSettings(tokenizer_path, workers=workers)
    start = time.perf_counter()
    stats = run_tokenize(shards, work, out_prefix, settings, show_progress=False)
    stats["wall"] = time.perf_counter() - start
    return stats


# The cleaning of the earlier releases: the new steps and filters switched off.
FILTERS_OFF = dict(fix_mojibake=False, remove_symbol_lines=False, language="", redact_pii=False,
                   quality=QualityConfig(enabled=False))


def prepare_rate(corpus: Path, work: Path, clean: CleanConfig) -> tuple[int, int, float]:
    """(documents in, documents kept, seconds) of the prepare stage with one worker."""
    settings = PrepareSettings([str(corpus)], "text", "id", clean, DedupConfig(), 20_000, 1)
    start = time.perf_counter()
    stats = run_prepare(settings, work, show_progress=False).stats
    return stats["documents_in"], stats["documents_kept"], time.perf_counter() - start


def same(a: str, b: str) -> bool:
    return all(Path(a + s).read_bytes() == Path(b + s).read_bytes() for s in (".bin", ".idx"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=str(ROOT / "examples" / "tokenizer" / "sample_ar.model"))
    p.add_argument("--size-mb", type=float, default=50.0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard-docs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        tmp = Path(tmp)
        corpus, shards = make_corpus(tmp, args.size_mb, args.shard_docs, args.seed)
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {mb:.1f} MB, {sum(1 for _ in open(corpus, 'rb')):,} documents, {len(shards)} shards; "
              f"tokenizer {args.tokenizer}")
        base_tokens, base_s = baseline(corpus, args.tokenizer, str(tmp / "baseline"))
        base_rate = base_tokens / base_s
        rows = [("baseline (1 process, per-line Python call)", 1, base_tokens, base_s, base_rate, base_rate)]
        outputs = []
        for workers in sorted({1, args.workers}):
            out = str(tmp / f"ours{workers}")
            st = ours(shards, args.tokenizer, tmp / f"work{workers}", dataset_prefix(out), workers)
            outputs.append(dataset_prefix(out))
            rows.append(("native_megatron tokenize stage", workers, st["tokens"], st["wall"],
                         st["tokens_per_worker_second"], st["tokens"] / st["wall"]))
        identical = all(same(str(tmp / "baseline"), o) for o in outputs)
        prepared = [(name, *prepare_rate(corpus, tmp / f"prepare_{i}", clean)) for i, (name, clean) in
                    enumerate([("prepare, earlier filters only", CleanConfig(**FILTERS_OFF)),
                               ("prepare, all filters on (default)", CleanConfig())])]
    print(f"\n{'variant':44} {'workers':>7} {'tokens':>12} {'wall s':>8} {'tok/s/worker':>13} "
          f"{'tok/s wall':>12} {'per-core x':>10}")
    for name, w, tokens, wall, per_worker, per_wall in rows:
        print(f"{name:44} {w:7d} {tokens:12,} {wall:8.2f} {per_worker:13,.0f} {per_wall:12,.0f} "
              f"{per_worker / base_rate:10.2f}")
    print(f"\noutputs byte-identical to the baseline: {identical}")
    print(f"\n{'variant':44} {'docs in':>9} {'kept':>9} {'wall s':>8} {'docs/s/core':>12}")
    for name, docs, kept, wall in prepared:
        print(f"{name:44} {docs:9,} {kept:9,} {wall:8.2f} {docs / wall:12,.0f}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
