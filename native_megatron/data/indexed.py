"""The tokenize stage: document shards -> Megatron indexed dataset (.bin/.idx).

Each shard is tokenized by a worker process into its own partition, written
with megatron-core's ``IndexedDatasetBuilder``; the partitions are then merged,
in shard order, with the same builder's ``add_index``. One document is one
sequence and one Megatron document, followed by the EOD id.

Per worker, the fast path encodes a batch of documents in one tokenizer call
that returns arrays (no Python int per token) and hands each document to the
builder as an array of the file's dtype already.

A partition is a unit of work (:mod:`native_megatron.data.work`): complete when
its ``.done.json`` (written last) carries its identity and its files check, so a
killed run resumes by redoing only the unfinished partitions, after removing
the half-written ``.tmp{PID}`` files its killed writers left.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from native_megatron.data.executor import Unit, execute
from native_megatron.data.shards import read_shard_texts
from native_megatron.data.tasks import publish, remove_stale_temp_files, temp_prefix
from native_megatron.data.tokenizer import Tokenizer, load_tokenizer
from native_megatron.data.work import Marker, identity
from native_megatron.utils.io import atomic_open
from native_megatron.utils.logging import quiet_third_party
from native_megatron.utils.parallel import batched

logger = logging.getLogger(__name__)


@dataclass
class TokenizeSettings:
    tokenizer: str
    eod_token: str | None = None
    append_eod: bool = True
    add_bos: bool = False
    batch_size: int = 64
    workers: int = 1


@dataclass
class PartResult:
    prefix: str
    documents: int
    tokens: int
    seconds: float
    reused: bool = False
    # The largest token id written (-1: none): the trainer checks it against the model's vocabulary.
    max_id: int = -1


def dataset_prefix(output_prefix: str) -> str:
    """``{prefix}_text_document``, the name Megatron's own preprocessing gives."""
    return f"{output_prefix}_text_document"


def preload_writer() -> None:
    """Import megatron-core's builder now (about 4 s), e.g. before forking workers that write."""
    _builder_cls()


_WRITER_MODULE = "megatron.core.datasets.indexed_dataset"


def _builder_cls():
    """megatron-core's builder. Its package imports torch and megatron.core's model-parallel modules first
    (about 4 s, 20 s on a loaded node), which a process pays once: say so rather than seem stuck."""
    if _WRITER_MODULE not in sys.modules:
        logger.info("loading megatron-core's indexed dataset writer (imports torch and megatron.core: a few "
                    "seconds, once per process)")
    quiet_third_party()
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    return IndexedDatasetBuilder


# ---- worker side -----------------------------------------------------------------

_TOKENIZERS: dict[tuple, Tokenizer] = {}


def _tokenizer(settings: TokenizeSettings) -> Tokenizer:
    key = (settings.tokenizer, settings.eod_token)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(settings.tokenizer, settings.eod_token)
    return _TOKENIZERS[key]


def _part_identity(shard: str, settings: TokenizeSettings, tok: Tokenizer) -> str:
    st = os.stat(shard)
    return identity({"step": "tokenize", "shard": os.path.abspath(shard), "shard_bytes": st.st_size,
                     "shard_mtime_ns": st.st_mtime_ns, "tokenizer": tok.identity(), "append_eod": settings.append_eod,
                     "add_bos": settings.add_bos})


class DocumentEncoder:
    """Texts -> one id array per document, as it goes into the .bin: [BOS] ids [EOD], in the file's dtype."""

    def __init__(self, settings: TokenizeSettings) -> None:
        self.tok = _tokenizer(settings)
        self.dtype = self.tok.dtype
        self.prefix = [self.tok.bos_id] if settings.add_bos and self.tok.bos_id is not None else []
        self.suffix = [self.tok.eod_id] if settings.append_eod else []

    @staticmethod
    def dtype_of(settings: TokenizeSettings):
        return _tokenizer(settings).dtype

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        return [_assemble(ids, self.prefix, self.suffix, self.dtype) for ids in self.tok.encode_batch(texts)]


def write_partition(documents: Iterable[tuple[dict, np.ndarray]], part_prefix: str, dtype) -> dict:
    """``(row, ids)`` pairs -> partition ``part_prefix``.bin/.idx (megatron-core's builder, renamed into
    place) and ``.manifest.jsonl`` (each row with its ``tokens``); returns documents, tokens, max_id."""
    tmp = temp_prefix(part_prefix)
    builder = _builder_cls()(tmp + ".bin", dtype=dtype)
    documents_n = tokens = 0
    max_id = -1
    with atomic_open(part_prefix + ".manifest.jsonl", "w") as mf:
        for row, doc in documents:
            builder.add_document(doc, [doc.size])
            mf.write(json.dumps({"id": row["id"], "file": row["file"], "line": row["line"],
                                 "tokens": int(doc.size)}, ensure_ascii=False) + "\n")
            documents_n += 1
            tokens += int(doc.size)
            if doc.size:
                max_id = max(max_id, int(doc.max()))
        builder.finalize(tmp + ".idx")
    publish(tmp, part_prefix, (".bin", ".idx"))
    return {"documents": documents_n, "tokens": tokens, "max_id": max_id}


def tokenize_unit(shard: str, part_prefix: str, settings: TokenizeSettings) -> Unit:
    """Tokenizing one shard into partition ``part_prefix`` (.bin/.idx/.manifest.jsonl): a unit whose
    marker (``.done.json``) records those files."""
    marker = Marker(Path(part_prefix + ".done.json"),
                    {"identity": _part_identity(shard, settings, _tokenizer(settings))})
    return Unit(os.path.basename(part_prefix), marker, partial(_tokenize, shard, part_prefix, settings))


def _tokenize(shard: str, part_prefix: str, settings: TokenizeSettings) -> tuple[dict, list]:
    start = time.monotonic()
    encoder = DocumentEncoder(settings)

    def documents():
        for batch in batched(read_shard_texts(shard), settings.batch_size):
            yield from zip(batch, encoder.encode([r["text"] for r in batch]))

    result = write_partition(documents(), part_prefix, encoder.dtype)
    result["seconds"] = round(time.monotonic() - start, 3)
    return result, [part_prefix + suffix for suffix in (".bin", ".idx", ".manifest.jsonl")]


def _assemble(ids: np.ndarray, prefix: list[int], suffix: list[int], dtype) -> np.ndarray:
    doc = np.empty(len(prefix) + ids.size + len(suffix), dtype=dtype)
    doc[: len(prefix)] = prefix
    doc[len(prefix): len(prefix) + ids.size] = ids
    if suffix:
        doc[-len(suffix):] = suffix
    return doc


# ---- main side -------------------------------------------------------------------


def merge_partitions(parts: list[str], out_prefix: str, dtype) -> None:
    """Concatenate partitions, in order, into ``out_prefix``.bin/.idx with megatron-core's builder.

    The .bin is renamed into place before the .idx, and a dataset exists for
    megatron-core only when both do, so a crash never leaves a usable-looking
    half dataset.
    """
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_prefix(out_prefix)
    for suffix in (".idx", ".bin"):
        if os.path.exists(out_prefix + suffix):
            os.unlink(out_prefix + suffix)
    builder = _builder_cls()(tmp + ".bin", dtype=dtype)
    for part in parts:
        builder.add_index(part)
    builder.finalize(tmp + ".idx")
    publish(tmp, out_prefix, (".bin", ".idx"))


def publish_dataset(parts: list[str], out_prefix: str, dtype) -> None:
    """The dataset from ``parts`` in order (none: no dataset rather than an empty one, and none left
    from an earlier run on this prefix), after removing temp files its killed writers left."""
    out_dir = Path(out_prefix).parent
    if out_dir.is_dir():
        remove_stale_temp_files(out_dir, glob.escape(Path(out_prefix).name))
    if parts:
        merge_partitions(parts, out_prefix, dtype)
    else:
        for suffix in (".bin", ".idx"):
            Path(out_prefix + suffix).unlink(missing_ok=True)


def run_tokenize(shards: list[str], work_dir: Path, out_prefix: str, settings: TokenizeSettings,
                 show_progress: bool = True) -> dict[str, Any]:
    """Tokenize ``shards`` into partitions under ``work_dir`` and merge them into ``out_prefix``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(work_dir, "part-*")
    tok = _tokenizer(settings)
    start = time.monotonic()
    workers = max(1, min(settings.workers, len(shards)))
    done = execute("tokenize", len(shards), lambda i: tokenize_unit(shards[i], str(work_dir / f"part-{i:05d}"),
                                                                    settings), workers=workers, progress=show_progress)
    results = [PartResult(str(work_dir / d.name), d.record["documents"], d.record["tokens"],
                          0.0 if d.reused else d.record["seconds"], reused=d.reused, max_id=d.record["max_id"])
               for d in done]
    merge_start = time.monotonic()
    publish_dataset([r.prefix for r in results] if sum(r.documents for r in results) else [], out_prefix,
                    tok.dtype)
    merge_seconds = time.monotonic() - merge_start
    elapsed = time.monotonic() - start
    worker_seconds = sum(r.seconds for r in results)
    tokens = sum(r.tokens for r in results)
    done_now = [r for r in results if not r.reused]
    stats = {
        "tokenizer": tok.describe(),
        "documents": sum(r.documents for r in results),
        "tokens": tokens,
        "partitions": len(results),
        "partitions_reused": len(results) - len(done_now),
        "workers": workers,
        "seconds": round(elapsed, 3),
        "merge_seconds": round(merge_seconds, 3),
        "max_token_id": max((r.max_id for r in results), default=-1),
        # Tokens per second of worker time: the per-core rate, independent of worker count.
        "tokens_per_worker_second": round(sum(r.tokens for r in done_now) / worker_seconds, 1)
        if worker_seconds > 0 else None,
        "settings": {k: v for k, v in asdict(settings).items() if k != "workers"},
    }
    logger.info("tokenize: %d documents, %d tokens, %d partitions in %.1fs",
                stats["documents"], tokens, len(results), elapsed)
    return stats


def partition_manifests(work_dir: Path, count: int) -> list[str]:
    return [str(work_dir / f"part-{i:05d}.manifest.jsonl") for i in range(count)]


def dataset_identity(prefix: str) -> dict[str, Any]:
    """What ties facts recorded about the dataset at ``prefix`` to its files: both sizes and a blake2b
    of the ``.idx``, which changes with any change of content that matters (document lengths and
    offsets) and is small next to the ``.bin``. Preprocessing records it in ``_stats.json`` under
    ``"dataset_files"`` -> the prefix's basename; training trusts those stats only while it matches."""
    digest = hashlib.blake2b()
    with open(prefix + ".idx", "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return {"bin_bytes": os.path.getsize(prefix + ".bin"), "idx_bytes": os.path.getsize(prefix + ".idx"),
            "idx_blake2b": digest.hexdigest()}
