"""The prepare stage: raw inputs -> parsed, cleaned, deduplicated document shards.

Parsing, cleaning and fingerprinting run in worker processes, a chunk of lines
at a time; the deduplication decisions run in this process in input order, so
the output does not depend on the number of workers. Output, in the work
directory:

- ``shard-00000.jsonl`` ...: ``{"id", "file", "line", "text"}`` per kept document;
- ``manifest.jsonl``: one row per input line, kept or dropped with the reason, and
  the language found (``language``, ``language_score``) where it was looked for;
- ``stats.json``: counts per reason and per cleaning step;
- ``DONE.json``: written last; it carries a fingerprint of the inputs and
  settings, so a rerun reuses the stage only when nothing changed.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from native_megatron.data.cleaning import CleanConfig, Cleaner
from native_megatron.data.dedup import DedupConfig, Deduplicator, Fingerprint, fingerprint
from native_megatron.data.langid import LanguageGuess
from native_megatron.data.manifest import DROPPED, PASSED, ManifestWriter
from native_megatron.data.readers import RawRecord, RecordSkip, iter_records, parse_document
from native_megatron.data.shards import ShardWriter
from native_megatron.utils.io import Progress, atomic_open, atomic_write_json
from native_megatron.utils.parallel import batched, ordered_map

logger = logging.getLogger(__name__)

CHUNK_RECORDS = 256


@dataclass
class PrepareSettings:
    files: list[str]
    text_key: str
    id_key: str
    clean: CleanConfig
    dedup: DedupConfig
    shard_size: int
    workers: int
    url_key: str | None = None


@dataclass
class PrepareResult:
    shards: list[str]
    manifest: str
    stats: dict[str, Any] = field(default_factory=dict)


# ---- worker side -----------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(settings: PrepareSettings) -> None:
    _WORKER["settings"] = settings
    _WORKER["cleaner"] = Cleaner(settings.clean)
    _WORKER["names"] = [os.path.basename(f) for f in settings.files]


@dataclass
class Outcome:
    file: int
    line: int
    doc_id: str
    reason: str | None = None
    detail: str | None = None
    text: str | None = None
    fp: Fingerprint | None = None
    language: LanguageGuess | None = None


def _process_chunk(chunk: list[RawRecord]) -> tuple[list[Outcome], Counter]:
    s: PrepareSettings = _WORKER["settings"]
    cleaner: Cleaner = _WORKER["cleaner"]
    before = Counter(cleaner.counts)
    out = []
    for rec in chunk:
        name = _WORKER["names"][rec.file]
        try:
            doc = parse_document(rec, s.text_key, s.id_key, name, s.url_key)
        except RecordSkip as skip:
            out.append(Outcome(rec.file, rec.line, f"{name}:{rec.line}", skip.reason, skip.detail or None))
            continue
        v = cleaner.process(doc.text, doc.url)
        if v.reason is not None:
            out.append(Outcome(rec.file, rec.line, doc.doc_id, v.reason, v.detail, language=v.language))
            continue
        out.append(Outcome(rec.file, rec.line, doc.doc_id, text=v.text, fp=fingerprint(v.text, s.dedup),
                           language=v.language))
    return out, cleaner.counts - before


# ---- main side -------------------------------------------------------------------


class SkipLog:
    """Log the first few skips of each reason with file and line; the manifest has them all."""

    # Reasons that point at broken input rather than at ordinary filtering.
    INPUT_PROBLEMS = ("invalid_json", "invalid_utf8", "missing_text_key", "null_text", "text_not_string",
                      "not_an_object", "empty_text", "too_long", "read_error")

    def __init__(self, per_reason: int = 5) -> None:
        self.per_reason = per_reason
        self.seen: Counter = Counter()

    def log(self, row: dict) -> None:
        reason = row["reason"]
        if reason not in self.INPUT_PROBLEMS:
            return
        self.seen[reason] += 1
        n = self.seen[reason]
        if n <= self.per_reason:
            more = f" ({row['detail']})" if row.get("detail") else ""
            logger.warning("skipped %s:%d: %s%s", row["file"], row["line"], reason, more)
        if n == self.per_reason:
            logger.warning("further '%s' skips are not logged; the manifest lists every one", reason)


def run_prepare(settings: PrepareSettings, work_dir: Path, show_progress: bool = True) -> PrepareResult:
    """Run the stage into ``work_dir`` (which the caller has emptied)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    read_stats: dict[str, Any] = {}
    records = iter_records(settings.files, settings.text_key, settings.id_key, read_stats, settings.url_key)
    chunks = batched(records, CHUNK_RECORDS)
    dedup = Deduplicator(settings.dedup)
    shards = ShardWriter(work_dir, settings.shard_size)
    clean_counts: Counter = Counter()
    chars_out = 0
    manifest_path = work_dir / "manifest.jsonl"
    skips = SkipLog()
    with atomic_open(manifest_path, "w") as mf, Progress(None, "prepare", enabled=show_progress) as bar:
        manifest = ManifestWriter(mf)
        results = ordered_map(_process_chunk, chunks, settings.workers,
                              initializer=_init_worker, initargs=(settings,))
        for outcomes, counts in results:
            clean_counts.update(counts)
            for o in outcomes:
                row = {"id": o.doc_id, "file": settings.files[o.file], "line": o.line}
                if o.reason is None:
                    dup = dedup.check(o.doc_id, o.fp)
                    if dup is not None:
                        o.reason, row["duplicate_of"] = dup
                if o.reason is not None:
                    row.update(status=DROPPED, reason=o.reason)
                    if o.detail:
                        row["detail"] = o.detail
                    skips.log(row)
                else:
                    row["status"] = PASSED
                    shards.write({**{k: row[k] for k in ("id", "file", "line")}, "text": o.text})
                    chars_out += len(o.text)
                if o.language is not None:
                    row.update(language=o.language.language, language_score=o.language.score)
                manifest.write(row)
            bar.update(len(outcomes))
        shards.close()
    elapsed = time.monotonic() - start
    stats = {
        "input_files": len(settings.files),
        "documents_in": sum(manifest.status.values()),
        "documents_kept": manifest.status[PASSED],
        "documents_dropped": manifest.status[DROPPED],
        "dropped_by_reason": dict(sorted(manifest.reasons.items())),
        "cleaning_steps": dict(sorted(clean_counts.items())),
        "characters_out": chars_out,
        "dedup": {"exact": settings.dedup.exact, "near": settings.dedup.near,
                  "bands_rows": dedup.bands_rows, "threshold": settings.dedup.threshold},
        "empty_files": read_stats.get("empty_files", []),
        "read_errors": read_stats.get("read_errors", {}),
        "shards": len(shards.paths),
        "seconds": round(elapsed, 3),
    }
    atomic_write_json(work_dir / "stats.json", stats)
    logger.info("prepare: %d documents in, %d kept, %d dropped (%s) in %.1fs",
                stats["documents_in"], stats["documents_kept"], stats["documents_dropped"],
                ", ".join(f"{k} {v}" for k, v in stats["dropped_by_reason"].items()) or "none", elapsed)
    return PrepareResult([str(p) for p in shards.paths], str(manifest_path), stats)
