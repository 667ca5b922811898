"""The rewrite stage: cleaned shards -> aligned shards, one shard at a time, resumable.

For each shard assigned to this rank (shard ``i`` goes to rank ``i % world``):
documents are chunked to the rewriter's context, sent to the backend (streamed
through a window of requests in flight for a server fleet, see streaming.py; in
large batches for an offline engine), joined back, validated, and handled by the
failure policy (the steps are in rewriter.py). The aligned shard
(``shard-N.jsonl``: the rewritten or kept raw text of every document that was not
dropped), its manifest (``shard-N.manifest.jsonl``: one row per document with its
status, the failed checks, backend, model and guidelines), its rewrites file
(``shard-N.rewrites.jsonl``: one row per attempt, see docs/alignment.md) and last
its completion marker (``shard-N.done.json``, with the shard's counts and the
rewrites file's size) are written atomically. A rerun skips finished shards; a
killed run loses at most the shards in flight, and nothing is written twice.
Once every shard is done, the rewrites files are merged into
``PREFIX_rewrites.jsonl`` beside the final manifest.

The finished shards must have rewritten at least ``min_rewritten_fraction`` of
their documents, or the stage raises :class:`TooFewRewritten` before anything
is tokenized: a rewriter that fails validation on everything is a broken
setup, and its "aligned" dataset would be the raw text under another name.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from native_megatron.alignment.backends import BackendUnavailable, RewriterBackend, build_backend
from native_megatron.alignment.config import RewriteConfig
from native_megatron.alignment.guidelines import Guidelines, load_guidelines
from native_megatron.alignment.progress import RewriteProgress
from native_megatron.alignment.rewriter import (  # noqa: F401  (the stage's public names, used by its callers)
    KEPT_RAW,
    REMOTE_BACKENDS,
    REWRITTEN,
    DocResult,
    Rewriter,
)
from native_megatron.alignment.streaming import Stream, client_workers, start_pool
from native_megatron.alignment.validation import ValidationConfig
from native_megatron.data.shards import read_shard_texts
from native_megatron.data.tasks import ShardTask, StageResult
from native_megatron.data.work import pid_alive
from native_megatron.utils.io import atomic_open

logger = logging.getLogger(__name__)


class TooFewRewritten(RuntimeError):
    """The finished shards rewrote less than ``rewrite.min_rewritten_fraction`` of their documents.
    The shards are kept: a rerun with a lower minimum reuses them."""


def stage_signature(config: RewriteConfig, validation: ValidationConfig, guidelines: Guidelines) -> str:
    """What must match for a finished shard to be reused."""
    skip = ("rank", "world_size", "batch_size", "min_rewritten_fraction", "client_workers", "progress_interval_s")
    relevant = {k: v for k, v in asdict(config).items() if k not in skip}
    relevant["retry_sampling"] = asdict(config.retry())  # what the retry uses, however it was set
    relevant["openai"] = {"api": "openai"}  # where the model is served does not change the output
    relevant["hf"] = {"dtype": config.hf.dtype}
    relevant["vllm"] = {k: v for k, v in asdict(config.vllm).items() if k != "documents_per_call"}
    relevant["validation"] = asdict(validation)
    relevant["guidelines"] = guidelines.sha256
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _shard_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    base = out_dir / f"shard-{index:05d}"
    return Path(f"{base}.jsonl"), Path(f"{base}.manifest.jsonl")


def _rewrites_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.rewrites.jsonl"


def _shard_task(out_dir: Path, index: int, signature: str, source: str) -> ShardTask:
    st = os.stat(source)
    return ShardTask(out_dir / f"shard-{index:05d}.done.json",
                     {"signature": signature,
                      "source": {"source": os.path.abspath(source), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}})


def _shard_done(out_dir: Path, index: int, signature: str, source: str) -> dict | None:
    """The shard's done marker, when it matches and its rewrites file is there at the size it records (a
    shard finished before rewrites were kept has none, and is redone)."""
    marker = _shard_task(out_dir, index, signature, source).load_done()
    path = _rewrites_path(out_dir, index)
    if marker is None or "rewrites_bytes" not in marker or not path.exists() \
            or path.stat().st_size != marker["rewrites_bytes"]:
        return None
    return marker


class LiveRows:
    """The shard's rewrites file while it is written: one JSON row per line, flushed row by row, so a reader
    can follow a running job (``shard-N.rewrites.jsonl.tmp-HOST-PID``, its last line possibly cut); renamed
    into place on success, removed on failure. A kill leaves it behind, and :func:`remove_dead_live_files`
    clears it at the next start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = Path(f"{path}.tmp-{socket.gethostname()}-{os.getpid()}")
        self.f = open(self.tmp, "w", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        self.f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.f.flush()

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def remove_dead_live_files(out_dir: Path) -> None:
    """Remove rewrites files in flight (see :class:`LiveRows`) whose writer, on this host, is gone."""
    host = socket.gethostname()
    for path in out_dir.glob("shard-*.rewrites.jsonl.tmp-*"):
        owner, _, pid = path.name.rpartition(".tmp-")[2].rpartition("-")
        if owner == host and pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)

    return True


def _results(rewriter: Rewriter, rows, pool, progress: RewriteProgress):
    """DocResults in input order: streamed when the backend can, else in batches."""
    if rewriter.backend.window() > 0:
        yield from Stream(rewriter, pool, on_progress=progress.show).run(rows)
        return
    size = rewriter.backend.documents_per_call or rewriter.config.batch_size
    while batch := [r for _, r in zip(range(size), rows)]:
        yield from rewriter.rewrite(batch)
        progress.show(0)


class ShardWriter:
    """One shard's outputs while its documents come back: the aligned shard and its manifest (atomic),
    the rewrites file (live, see :class:`LiveRows`); :meth:`commit` puts them in place and writes the
    done marker last."""

    def __init__(self, rewriter: Rewriter, source: str, index: int, out_dir: Path, signature: str) -> None:
        self.rewriter, self.source, self.index, self.out_dir, self.signature = rewriter, source, index, out_dir, \
            signature
        self.start = time.monotonic()
        self.counts: Counter = Counter()
        self.checks: Counter = Counter()
        self.tokens: Counter = Counter()
        self._files = contextlib.ExitStack()
        aligned, manifest = _shard_paths(out_dir, index)
        self.af = self._files.enter_context(atomic_open(aligned, "w"))
        self.mf = self._files.enter_context(atomic_open(manifest, "w"))
        self.live = LiveRows(_rewrites_path(out_dir, index))

    def write(self, r: DocResult) -> None:
        self.counts[r.status] += 1
        self.checks.update(r.failed)
        self.counts["retried"] += int(r.retried)
        self.tokens["prompt"] += r.prompt_tokens
        self.tokens["completion"] += r.completion_tokens
        self.tokens["chars_in"] += len(r.row["text"])
        self.tokens["chars_out"] += len(r.text or "")
        self.mf.write(json.dumps(self.rewriter.manifest_row(r), ensure_ascii=False) + "\n")
        if r.text is not None:
            self.af.write(json.dumps({"id": r.row["id"], "file": r.row["file"], "line": r.row["line"],
                                      "text": r.text}, ensure_ascii=False) + "\n")
        self.live.write(self.rewriter.attempt_rows(r))

    def commit(self) -> dict:
        self._files.close()     # the aligned shard and manifest, renamed into place
        self.live.commit()
        return _shard_task(self.out_dir, self.index, self.signature, self.source).mark_done(
            {"counts": dict(self.counts), "failed_checks": dict(self.checks), "tokens": dict(self.tokens),
             "seconds": round(time.monotonic() - self.start, 3),
             "rewrites_bytes": _rewrites_path(self.out_dir, self.index).stat().st_size, **self.rewriter.meta})

    def discard(self, exc: BaseException) -> None:
        self.live.discard()
        self._files.__exit__(type(exc), exc, exc.__traceback__)   # atomic_open removes its temporary files


def rewrite_shards(rewriter: Rewriter, shards: list[str], todo: list[int], out_dir: Path, signature: str,
                   progress: RewriteProgress, pool=None) -> None:
    """Rewrite the ``todo`` shards as one flow of documents (no barrier between shards either); each
    shard is committed, with its done marker, as soon as its last document is written."""
    owners: collections.deque[int] = collections.deque()   # the shard of each document read, in order

    def rows():
        for i in todo:
            for row in read_shard_texts(shards[i]):
                owners.append(i)
                yield row

    pending = list(todo)        # shards not committed, in order
    writer: ShardWriter | None = None
    try:
        for r in _results(rewriter, rows(), pool, progress):
            i = owners.popleft()
            while pending[0] != i:          # the shards before this one are complete (an empty one too)
                _finish(writer or ShardWriter(rewriter, shards[pending[0]], pending[0], out_dir, signature))
                writer = None
                pending.pop(0)
            if writer is None:
                writer = ShardWriter(rewriter, shards[i], i, out_dir, signature)
            writer.write(r)
            progress.document(r.completion_tokens, r.status == REWRITTEN)
        while pending:
            _finish(writer or ShardWriter(rewriter, shards[pending[0]], pending[0], out_dir, signature))
            writer = None
            pending.pop(0)
    except BaseException as exc:
        if writer is not None:
            writer.discard(exc)
        raise


def _finish(writer: ShardWriter) -> None:
    try:
        writer.commit()
    except BaseException as exc:
        writer.discard(exc)
        raise


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def final_rewrites_path(out_dir: Path) -> Path | None:
    """``PREFIX_rewrites.jsonl`` for a stage directory ``PREFIX_work/rewrite``; None for another layout."""
    work = out_dir.resolve().parent
    if not work.name.endswith("_work"):
        return None
    return work.parent / (work.name[: -len("_work")] + "_rewrites.jsonl")


def merge_rewrites(out_dir: Path, n_shards: int, final: Path) -> None:
    """Concatenate the shards' rewrites files, in shard order, into ``final`` (atomically), unless it is
    already their concatenation."""
    parts = [_rewrites_path(out_dir, i) for i in range(n_shards)]
    size = sum(p.stat().st_size for p in parts)
    if final.exists() and final.stat().st_size == size \
            and final.stat().st_mtime_ns >= max((p.stat().st_mtime_ns for p in parts), default=0):
        return
    with atomic_open(final, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)


def run_rewrite(shards: list[str], out_dir: Path, config: RewriteConfig, validation: ValidationConfig,
                show_progress: bool = True, backend: RewriterBackend | None = None,
                do_work: bool = True) -> StageResult:
    """Rewrite this rank's unfinished shards (unless ``do_work`` is False); report whether every
    shard, of all ranks, is done. Once all are, their rewrites files are merged into
    ``PREFIX_rewrites.jsonl`` beside the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    guidelines = load_guidelines(config.guidelines)
    signature = stage_signature(config, validation, guidelines)
    rank, world = config.work_split()
    mine = [i for i in range(len(shards)) if i % world == rank]
    todo = [i for i in mine if _shard_done(out_dir, i, signature, shards[i]) is None]
    if not do_work:
        todo = []
    else:
        logger.info("rewrite: rank %d of %d: %d of its %d shards to do (%d shards in all)", rank, world,
                    len(todo), len(mine), len(shards))
    start = time.monotonic()
    if todo:
        remove_dead_live_files(out_dir)
        owns_backend = backend is None
        backend = backend or build_backend(config)
        rewriter = Rewriter(config, validation, backend, guidelines)
        # Before any HTTP thread starts: the pool's processes are spawned from a quiet process.
        pool = start_pool(rewriter, client_workers(config, backend.window())) if backend.window() > 0 else None
        total_docs = sum(_count_lines(shards[i]) for i in todo)
        try:
            with RewriteProgress(total_docs, config.progress_interval_s, show_progress,
                                 out_dir / f"progress-rank-{rank:05d}.json") as progress:
                rewrite_shards(rewriter, shards, todo, out_dir, signature, progress, pool)
        except BackendUnavailable as exc:
            raise BackendUnavailable(f"rewrite stopped: {exc}. Finished shards are kept; rerun the same "
                                     f"command to continue.") from None
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if owns_backend:
                backend.close()
    seconds = time.monotonic() - start
    infos = [_shard_done(out_dir, i, signature, shards[i]) for i in range(len(shards))]
    complete = all(info is not None for info in infos)
    final = final_rewrites_path(out_dir)
    if complete and final is not None:
        merge_rewrites(out_dir, len(shards), final)
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
