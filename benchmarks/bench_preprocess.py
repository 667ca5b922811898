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

Last, the public command line (``tools/preprocess_aligned.py``) as a subprocess
pinned to one core, every cleaning step, filter and dedup off so that it keeps
every document unchanged: wall tokens/s including start-up, and the tokenize
stage's tokens per worker-second as a fraction of the bare tokenizer's batch
speed on the same texts (target 0.85). With ``--megatron-lm DIR`` (a Megatron-LM
checkout; it is not a pip package), upstream ``DIR/tools/preprocess_data.py``
runs on the same file, tokenizer and core, and the bytes of the two datasets
are compared. Upstream imports triton at start-up; without it installed, put
it in a folder of its own and name it with ``--megatron-lm-pythonpath``.

    python benchmarks/bench_preprocess.py --size-mb 50 --workers 2
    pip install --no-deps --target /tmp/mlm-deps triton
    python benchmarks/bench_preprocess.py --size-mb 20 --cli-only \\
        --megatron-lm /src/Megatron-LM --megatron-lm-pythonpath /tmp/mlm-deps
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from native_megatron.data.cleaning import CleanConfig
from native_megatron.data.dedup import DedupConfig
from native_megatron.data.indexed import TokenizeSettings, dataset_prefix, run_tokenize
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
    # Imported here so that --cli-only does not depend on the prepare stage's Python API.
    from native_megatron.data.prepare import PrepareSettings, run_prepare

    settings = PrepareSettings([str(corpus)], "text", "id", clean, DedupConfig(), 20_000, 1)
    start = time.perf_counter()
    stats = run_prepare(settings, work, show_progress=False).stats
    return stats["documents_in"], stats["documents_kept"], time.perf_counter() - start


def same(a: str, b: str) -> bool:
    return all(Path(a + s).read_bytes() == Path(b + s).read_bytes() for s in (".bin", ".idx"))


def inprocess_sections(args: argparse.Namespace, corpus: Path, shards: list[str], tmp: Path) -> bool:
    """Print the in-process tokenize and prepare tables; False when the outputs differ from the baseline."""
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
    return identical


# --- The command lines, each a subprocess on one core: ours and, given a checkout, Megatron-LM's.

# Every step that drops or changes a document off, so that ours keeps the input
# texts as they are and upstream (which has no cleaning) sees the same documents.
CLI_FILTERS_OFF = [
    "--clean.fix_mojibake=false", "--clean.strip_html=false", "--clean.nfkc=false",
    "--clean.remove_control=false", "--clean.remove_tatweel=false", "--clean.normalize_whitespace=false",
    "--clean.remove_boilerplate=false", "--clean.min_chars=0", "--clean.min_words=0",
    "--clean.min_arabic_ratio=0", "--clean.remove_symbol_lines=false", "--clean.language=",
    "--clean.quality.enabled=false", "--clean.redact_pii=false", "--dedup.exact=false", "--dedup.near=false"]
TOKENIZE_TARGET = 0.85
UPSTREAM_PROGRESS = re.compile(r"Processed (\d+) documents \(([\d.]+) docs/s")


def pinned(core: int) -> list[str]:
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux); it pins the command lines to one core")
    return ["taskset", "-c", str(core)]


def timed_run(cmd: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return proc, time.perf_counter() - start


def ours_cli(corpus: Path, tokenizer: str, prefix: str, core: int) -> dict:
    cmd = pinned(core) + [sys.executable, str(ROOT / "tools" / "preprocess_aligned.py"), "--input", str(corpus),
                          "--output-prefix", prefix, "--tokenizer", tokenizer, "--workers", "1",
                          "--no-progress", "--log-level", "WARNING", *CLI_FILTERS_OFF]
    proc, wall = timed_run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"ours failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    stats = json.loads(Path(prefix + "_stats.json").read_text())
    timing = stats["timing"]
    return {"wall": wall, "documents": stats["documents_written"], "tokens": stats["tokens_written"],
            "timing": {k: timing.get(k) for k in ("seconds_total", "seconds_prepare", "seconds_tokenize")},
            "tokens_per_worker_second": timing.get("tokens_per_worker_second"), "dataset": prefix + "_text_document"}


def upstream_cli(megatron_lm: Path, extra_path: list[str], corpus: Path, tokenizer: str, prefix: str,
                 core: int) -> dict | str:
    """Megatron-LM's tools/preprocess_data.py, one worker; its figures, or why it failed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(megatron_lm), *extra_path]))
    cmd = pinned(core) + [sys.executable, str(megatron_lm / "tools" / "preprocess_data.py"), "--input", str(corpus),
                          "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
                          "--tokenizer-model", tokenizer, "--append-eod", "--json-keys", "text",
                          "--workers", "1", "--log-interval", "1000"]
    proc, wall = timed_run(cmd, env)
    if proc.returncode != 0:
        missing = re.findall(r"ModuleNotFoundError: No module named '([^']+)'", proc.stderr)
        if missing:
            return (f"upstream needs the module {missing[-1]!r}, not installed: pip install --no-deps --target DIR "
                    f"{missing[-1].split('.')[0]}, then --megatron-lm-pythonpath DIR")
        return f"upstream failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = prefix + "_text_document"
    index = IndexedDataset(dataset)
    # A copy: sequence_lengths is a view of the index's mmap, which goes with the object.
    lengths = index.sequence_lengths.copy()
    del index
    result = {"wall": wall, "documents": len(lengths), "tokens": int(lengths.sum()), "dataset": dataset,
              "in_loop": None}
    # Upstream prints only docs/s every --log-interval documents, timed from after
    # its start-up; the last such line, with the tokens of those documents, is its in-loop rate.
    progress = UPSTREAM_PROGRESS.findall(proc.stderr)
    if progress:
        docs, docs_per_s = int(progress[-1][0]), float(progress[-1][1])
        result["in_loop"] = int(lengths[:docs].sum()) * docs_per_s / docs
    return result


def bare_tokenizer_seconds(corpus: Path, tokenizer: str, core: int, batch: int = 64) -> tuple[int, float]:
    """(tokens with one EOD per document, seconds) of encode_batch over the corpus, one process on one core."""
    tok = load_tokenizer(tokenizer)
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        tokens = 0
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            tokens += sum(len(ids) for ids in tok.encode_batch(texts[i:i + batch]))
        seconds = time.perf_counter() - start
    finally:
        os.sched_setaffinity(0, affinity)
    return tokens + len(texts), seconds


def digest(prefix: str) -> str:
    h = hashlib.sha256()
    for suffix in (".bin", ".idx"):
        h.update(Path(prefix + suffix).read_bytes())
    return h.hexdigest()


STARTUP_TARGET = 2.0


def startup_seconds(corpus: Path, tokenizer: str, tmp: Path, core: int, repeats: int = 3) -> float:
    """Wall seconds of the whole command that reads, cleans, fingerprints and writes one document:
    interpreter, imports, tokenizer, plan and the first document (the dataset writer is not imported)."""
    one = tmp / "one.jsonl"
    with open(corpus, "rb") as f:
        one.write_bytes(f.readline())
    best = float("inf")
    for i in range(repeats):
        cmd = pinned(core) + [sys.executable, str(ROOT / "tools" / "preprocess_aligned.py"), "--input", str(one),
                              "--output-prefix", str(tmp / f"startup{i}" / "s"), "--tokenizer", tokenizer,
                              "--workers", "1", "--no-progress", "--log-level", "WARNING", "--stage", "clean"]
        proc, wall = timed_run(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"start-up run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        best = min(best, wall)
    return best


def cli_section(args: argparse.Namespace, corpus: Path, tmp: Path) -> bool:
    """Print the command-line comparison; False when upstream ran and its bytes differ from ours."""
    documents = sum(1 for _ in open(corpus, "rb"))
    print("\ncommand lines, one core each (taskset -c {}):".format(args.core))
    # The bare tokenizer before and after ours, the faster of the two: the cores are often shared.
    bare_tokens, bare_before = bare_tokenizer_seconds(corpus, args.tokenizer, args.core)
    mine = ours_cli(corpus, args.tokenizer, str(tmp / "cli_ours"), args.core)
    bare_s = min(bare_before, bare_tokenizer_seconds(corpus, args.tokenizer, args.core)[1])
    up = None
    if args.megatron_lm:
        up = upstream_cli(Path(args.megatron_lm).resolve(), args.megatron_lm_pythonpath, corpus,
                          args.tokenizer, str(tmp / "cli_upstream"), args.core)
    if mine["documents"] != documents:
        print(f"WARNING: ours kept {mine['documents']:,} of {documents:,} documents; the comparison below "
              f"is on different documents")
    tokens, per_worker = mine["tokens"], mine["tokens_per_worker_second"]
    print(f"\n{'command':44} {'docs':>9} {'tokens':>12} {'wall s':>8} {'tok/s wall':>12} {'tok/s in-loop':>14}")
    print(f"{'native_megatron preprocess_aligned.py':44} {mine['documents']:9,} {tokens:12,} {mine['wall']:8.2f} "
          f"{tokens / mine['wall']:12,.0f} {per_worker or 0:14,.0f}")
    identical = True
    if isinstance(up, str):
        print(f"Megatron-LM preprocess_data.py: {up}")
    elif up is not None:
        in_loop = f"{up['in_loop']:14,.0f}" if up["in_loop"] else f"{'-':>14}"
        print(f"{'Megatron-LM tools/preprocess_data.py':44} {up['documents']:9,} {up['tokens']:12,} "
              f"{up['wall']:8.2f} {up['tokens'] / up['wall']:12,.0f} {in_loop}")
        ratio_loop = f"{per_worker / up['in_loop']:.2f}" if up["in_loop"] and per_worker else "-"
        print(f"ours / upstream: wall incl. start-up {(tokens / mine['wall']) / (up['tokens'] / up['wall']):.2f}, "
              f"in-loop {ratio_loop}")
        ours_sha, up_sha = digest(mine["dataset"]), digest(up["dataset"])
        identical = ours_sha == up_sha
        print(f"sha256(.bin+.idx): ours {ours_sha[:16]}, upstream {up_sha[:16]}; byte-identical: {identical}")
    print("ours, stats.json timing: " + ", ".join(f"{k} {v}" for k, v in mine["timing"].items())
          + f"; wall {mine['wall']:.2f} (the difference to seconds_total is start-up); "
            "tok/s in-loop is its tokens_per_worker_second")
    startup = startup_seconds(corpus, args.tokenizer, tmp, args.core)
    print(f"start-up to the first document (--stage clean on a one-document file, best of 3): {startup:.2f}s "
          f"(target {STARTUP_TARGET}s): {'PASS' if startup <= STARTUP_TARGET else 'ABOVE'}")
    bare_rate = bare_tokens / bare_s
    print(f"bare tokenizer, encode_batch of 64, one core, best of 2: {bare_tokens:,} tokens in {bare_s:.2f}s, "
          f"{bare_rate:,.0f} tokens/s")
    if per_worker:
        fraction = per_worker / bare_rate
        print(f"tokenize stage per worker-second / bare tokenizer: {fraction:.2f} "
              f"(target {TOKENIZE_TARGET}): {'PASS' if fraction >= TOKENIZE_TARGET else 'BELOW'}")
    else:
        print("tokenize stage per worker-second: not in stats.json timing; no fraction of the bare tokenizer")
    return identical


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=str(ROOT / "examples" / "tokenizer" / "sample_ar.model"))
    p.add_argument("--size-mb", type=float, default=50.0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard-docs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--megatron-lm", metavar="DIR",
                   help="a Megatron-LM checkout: also run its tools/preprocess_data.py on the same corpus")
    p.add_argument("--megatron-lm-pythonpath", metavar="DIR", nargs="+", default=[],
                   help="folders added after DIR to upstream's PYTHONPATH, e.g. one holding triton")
    p.add_argument("--core", type=int, default=0, help="the core the command lines are pinned to")
    p.add_argument("--cli-only", action="store_true",
                   help="only the command-line comparison; skip the in-process tokenize and prepare runs")
    args = p.parse_args()
    setup_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        tmp = Path(tmp)
        corpus, shards = make_corpus(tmp, args.size_mb, args.shard_docs, args.seed)
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {mb:.1f} MB, {sum(1 for _ in open(corpus, 'rb')):,} documents, {len(shards)} shards; "
              f"tokenizer {args.tokenizer}")
        identical = True if args.cli_only else inprocess_sections(args, corpus, shards, tmp)
        identical = cli_section(args, corpus, tmp) and identical
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
