"""The rewrite stage: cleaned shards -> aligned shards, one shard at a time, resumable.

For each shard assigned to this rank (shard ``i`` goes to rank ``i % world``):
documents are chunked to the rewriter's context, sent to the backend in
batches, joined back, validated, and handled by the failure policy. The
aligned shard (``shard-N.jsonl``: the rewritten or kept raw text of every
document that was not dropped), its manifest (``shard-N.manifest.jsonl``: one
row per document with its status, the failed checks, backend, model and
guidelines) and last its completion marker (``shard-N.done.json``, with the
shard's counts) are written atomically. A rerun skips finished shards; a
killed run loses at most the shards in flight, and nothing is written twice.

The finished shards must have rewritten at least ``min_rewritten_fraction`` of
their documents, or the stage raises :class:`TooFewRewritten` before anything
is tokenized: a rewriter that fails validation on everything is a broken
setup, and its "aligned" dataset would be the raw text under another name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from native_megatron.alignment.backends import BackendUnavailable, RewriterBackend, build_backend
from native_megatron.alignment.chunking import join_chunks, split_document
from native_megatron.alignment.config import RewriteConfig, SamplingConfig
from native_megatron.alignment.guidelines import Guidelines, load_guidelines
from native_megatron.alignment.validation import ValidationConfig, Validator
from native_megatron.data.manifest import DROPPED
from native_megatron.data.pii import PiiRedactor
from native_megatron.data.shards import read_shard_texts
from native_megatron.data.tasks import ShardTask, StageResult
from native_megatron.utils.io import Progress, atomic_open

logger = logging.getLogger(__name__)

REWRITTEN = "rewritten"
KEPT_RAW = "kept_raw"
# Backends that send document text out of this process, to a server that may be anyone's.
REMOTE_BACKENDS = ("openai",)


class TooFewRewritten(RuntimeError):
    """The finished shards rewrote less than ``rewrite.min_rewritten_fraction`` of their documents.
    The shards are kept: a rerun with a lower minimum reuses them."""


@dataclass
class DocResult:
    row: dict
    text: str | None          # what goes on to tokenization; None when dropped
    status: str
    failed: list[str] = field(default_factory=list)
    retried: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0


class Rewriter:
    """Rewrites batches of documents with one backend under one set of guidelines."""

    def __init__(self, config: RewriteConfig, validation: ValidationConfig, backend: RewriterBackend,
                 guidelines: Guidelines) -> None:
        self.config, self.backend, self.guidelines = config, backend, guidelines
        self.validator = Validator(validation, guidelines)
        self.meta = {"backend": backend.kind, "model": backend.model, "guidelines": guidelines.tag}
        # The prepare stage redacted what it kept; this is for text that never went through it
        # (seed pairs from raw files, clean.redact_pii off) before it leaves the machine.
        remote = backend.kind in REMOTE_BACKENDS and config.redact_pii
        self.redactor = PiiRedactor() if remote else None

    def _generate(self, texts: list[str], sampling: SamplingConfig) -> list[tuple[str, bool, int, int, int]]:
        """For each text: (joined rewrite, any chunk truncated, prompt tokens, completion tokens, chunks)."""
        plans = [split_document(t, self.config.max_input_tokens, self.backend.count_tokens) for t in texts]
        requests = [self.guidelines.messages(c.text) for chunks in plans for c in chunks]
        outputs = iter(self.backend.generate(requests, sampling))
        results = []
        for chunks in plans:
            gens = [next(outputs) for _ in chunks]
            results.append((join_chunks([g.text for g in gens], chunks),
                            any(g.finish_reason == "length" for g in gens),
                            sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens), len(chunks)))
        return results

    def rewrite(self, rows: list[dict]) -> list[DocResult]:
        c = self.config
        if self.redactor is not None:
            # The redacted text is the document from here on: what is validated, kept raw or paired.
            rows = [dict(r, text=self.redactor.redact(r["text"])[0]) for r in rows]
        results = []
        for row, (text, truncated, p_tok, c_tok, n) in zip(rows, self._generate([r["text"] for r in rows],
                                                                                 c.sampling)):
            failed = self.validator.check(row["text"], text, "length" if truncated else "stop")
            results.append(DocResult(row, text, REWRITTEN, failed, False, p_tok, c_tok, n))
        if c.on_failure == "retry":
            again = [i for i, r in enumerate(results) if r.failed]
            if again:
                redo = self._generate([rows[i]["text"] for i in again], c.retry())
                for i, (text, truncated, p_tok, c_tok, n) in zip(again, redo):
                    r = results[i]
                    failed = self.validator.check(rows[i]["text"], text, "length" if truncated else "stop")
                    r.retried, r.prompt_tokens, r.completion_tokens = True, r.prompt_tokens + p_tok, \
                        r.completion_tokens + c_tok
                    r.failed = failed if failed else []
                    if not failed:
                        r.text = text
        policy = c.after_retry if c.on_failure == "retry" else c.on_failure
        for r in results:
            if r.failed:
                r.status = KEPT_RAW if policy == "keep_raw" else DROPPED
                r.text = r.row["text"] if policy == "keep_raw" else None
        return results

    def manifest_row(self, r: DocResult) -> dict:
        row = {"id": r.row["id"], "file": r.row["file"], "line": r.row["line"], "status": r.status}
        if r.failed:
            row["reason"] = "rewrite_failed_validation"
            row["failed_checks"] = r.failed
        if r.retried:
            row["retried"] = True
        row.update(self.meta)
        row["chunks"] = r.chunks
        return row


def stage_signature(config: RewriteConfig, validation: ValidationConfig, guidelines: Guidelines) -> str:
    """What must match for a finished shard to be reused."""
    skip = ("rank", "world_size", "batch_size", "min_rewritten_fraction")
    relevant = {k: v for k, v in asdict(config).items() if k not in skip}
    relevant["retry_sampling"] = asdict(config.retry())  # what the retry uses, however it was set
    relevant["openai"] = {"api": "openai"}  # where the model is served does not change the output
    relevant["hf"] = {"dtype": config.hf.dtype}
    relevant["validation"] = asdict(validation)
    relevant["guidelines"] = guidelines.sha256
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _shard_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    base = out_dir / f"shard-{index:05d}"
    return Path(f"{base}.jsonl"), Path(f"{base}.manifest.jsonl")


def _shard_task(out_dir: Path, index: int, signature: str, source: str) -> ShardTask:
    st = os.stat(source)
    return ShardTask(out_dir / f"shard-{index:05d}.done.json",
                     {"signature": signature,
                      "source": {"source": os.path.abspath(source), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}})


def rewrite_shard(rewriter: Rewriter, source: str, index: int, out_dir: Path, signature: str,
                  bar: Progress) -> dict:
    """Rewrite one shard; returns its counts (also in its done marker)."""
    aligned, manifest = _shard_paths(out_dir, index)
    start = time.monotonic()
    counts: Counter = Counter()
    checks: Counter = Counter()
    tokens = Counter()
    with atomic_open(aligned, "w") as af, atomic_open(manifest, "w") as mf:
        batch: list[dict] = []
        rows = read_shard_texts(source)
        while True:
            batch = [r for _, r in zip(range(rewriter.config.batch_size), rows)]
            if not batch:
                break
            for r in rewriter.rewrite(batch):
                counts[r.status] += 1
                checks.update(r.failed)
                counts["retried"] += int(r.retried)
                tokens["prompt"] += r.prompt_tokens
                tokens["completion"] += r.completion_tokens
                tokens["chars_in"] += len(r.row["text"])
                tokens["chars_out"] += len(r.text or "")
                mf.write(json.dumps(rewriter.manifest_row(r), ensure_ascii=False) + "\n")
                if r.text is not None:
                    af.write(json.dumps({"id": r.row["id"], "file": r.row["file"], "line": r.row["line"],
                                         "text": r.text}, ensure_ascii=False) + "\n")
            bar.update(len(batch))
    seconds = time.monotonic() - start
    return _shard_task(out_dir, index, signature, source).mark_done(
        {"counts": dict(counts), "failed_checks": dict(checks), "tokens": dict(tokens),
         "seconds": round(seconds, 3), **rewriter.meta})


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def run_rewrite(shards: list[str], out_dir: Path, config: RewriteConfig, validation: ValidationConfig,
                show_progress: bool = True, backend: RewriterBackend | None = None,
                do_work: bool = True) -> StageResult:
    """Rewrite this rank's unfinished shards (unless ``do_work`` is False); report whether every
    shard, of all ranks, is done."""
    out_dir.mkdir(parents=True, exist_ok=True)
    guidelines = load_guidelines(config.guidelines)
    signature = stage_signature(config, validation, guidelines)
    rank, world = config.work_split()
    mine = [i for i in range(len(shards)) if i % world == rank]
    todo = [i for i in mine if not _shard_task(out_dir, i, signature, shards[i]).done()]
    if not do_work:
        todo = []
    else:
        logger.info("rewrite: rank %d of %d: %d of its %d shards to do (%d shards in all)", rank, world,
                    len(todo), len(mine), len(shards))
    start = time.monotonic()
    if todo:
        owns_backend = backend is None
        backend = backend or build_backend(config)
        rewriter = Rewriter(config, validation, backend, guidelines)
        total_docs = sum(_count_lines(shards[i]) for i in todo)
        try:
            with Progress(total_docs, "rewrite", enabled=show_progress) as bar:
                for i in todo:
                    rewrite_shard(rewriter, shards[i], i, out_dir, signature, bar)
        except BackendUnavailable as exc:
            raise BackendUnavailable(f"rewrite stopped: {exc}. Finished shards are kept; rerun the same "
                                     f"command to continue.") from None
        finally:
            if owns_backend:
                backend.close()
    seconds = time.monotonic() - start
    infos = [_shard_task(out_dir, i, signature, shards[i]).load_done() for i in range(len(shards))]
    complete = all(info is not None for info in infos)
    stats = _aggregate([i for i in infos if i is not None], seconds, len(shards))
    _check_rewritten(stats, config.min_rewritten_fraction, out_dir)
    paths = [_shard_paths(out_dir, i) for i in range(len(shards))]
    return StageResult([str(p[0]) for p in paths], [str(p[1]) for p in paths], stats, complete)


def format_rewritten(stats: dict) -> str:
    """The line that says how much was rewritten: ``rewritten: 300 of 321 documents sent to the rewriter (93.5%)``."""
    docs, fraction = stats["documents"], stats["rewritten_fraction"]
    share = f" ({100 * fraction:.1f}%)" if fraction is not None else ""
    return f"rewritten: {stats['by_status'].get(REWRITTEN, 0)} of {docs} documents sent to the rewriter{share}"


def _check_rewritten(stats: dict, minimum: float, out_dir: Path) -> None:
    fraction = stats["rewritten_fraction"]
    if fraction is None or fraction >= minimum:
        return
    checks = ", ".join(f"{k} {v}" for k, v in stats["failed_checks"].items()) or "none"
    raise TooFewRewritten(f"{format_rewritten(stats)}, below rewrite.min_rewritten_fraction={minimum:g}; "
                          f"failed checks: {checks}; nothing was tokenized. See why in "
                          f"{out_dir}/shard-*.manifest.jsonl, fix the rewriter, or accept these shards with "
                          f"--rewrite.min_rewritten_fraction=0 (they are kept and reused)")


def _aggregate(infos: list[dict], seconds: float, total_shards: int) -> dict:
    counts, checks, tokens = Counter(), Counter(), Counter()
    worker_seconds = 0.0
    for info in infos:
        counts.update(info["counts"])
        checks.update(info["failed_checks"])
        tokens.update(info["tokens"])
        worker_seconds += info["seconds"]
    docs = sum(v for k, v in counts.items() if k != "retried")
    return {
        "shards_done": len(infos), "shards_total": total_shards,
        "documents": docs, "by_status": dict(sorted(counts.items())), "failed_checks": dict(sorted(checks.items())),
        "rewritten_fraction": round(counts[REWRITTEN] / docs, 4) if docs else None,
        "prompt_tokens": tokens["prompt"], "completion_tokens": tokens["completion"],
        "characters_in": tokens["chars_in"], "characters_out": tokens["chars_out"],
        "backend": infos[0]["backend"] if infos else None, "model": infos[0]["model"] if infos else None,
        "guidelines": infos[0]["guidelines"] if infos else None,
        "timing": {"seconds_this_run": round(seconds, 3), "seconds_all_shards": round(worker_seconds, 3),
                   "documents_per_second": round(docs / worker_seconds, 3) if worker_seconds else None,
                   "generated_tokens_per_second": round(tokens["completion"] / worker_seconds, 1)
                   if worker_seconds else None},
    }
