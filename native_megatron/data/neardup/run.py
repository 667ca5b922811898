"""The four stages over JSONL/Parquet files: one stage task at a time (a SLURM array task), or all locally.

Stage-1 and stage-4 task ``i`` of ``n`` takes a contiguous slice of the input
files (so keys stay in input order per task); give at least as many files as
tasks. Stage-2 task ``i`` takes the units ``p % n == i``. Stage 4 writes, per
task, ``kept/part-NNNNN.jsonl`` (the kept input lines, unchanged) and
``manifest/part-NNNNN.jsonl`` (one row per input line, ``duplicate_of`` on the
dropped ones); in task order they are in input order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from native_megatron.data.dedup import DedupConfig
from native_megatron.data.manifest import DROPPED, PASSED
from native_megatron.data.neardup.clusters import Decisions, build_clusters
from native_megatron.data.neardup.merge import merge_buckets
from native_megatron.data.neardup.signatures import write_signatures
from native_megatron.data.neardup.store import StagesConfig, is_done, make_key, read_json, write_done
from native_megatron.data.readers import RecordSkip, iter_records, parse_document
from native_megatron.data.work import Lease, identity
from native_megatron.utils.config import ConfigError
from native_megatron.utils.io import atomic_open
from native_megatron.utils.parallel import mp_context
from native_megatron.utils.slurm import work_share

logger = logging.getLogger(__name__)

STAGES = ("signatures", "merge", "clusters", "filter")


@dataclass
class InputSpec:
    files: list[str]
    text_key: str = "text"
    id_key: str = "id"


@dataclass
class DedupRunConfig:
    dedup: DedupConfig = field(default_factory=DedupConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)


def task_files(files: list[str], task: int, num_tasks: int) -> list[tuple[int, str]]:
    """(file index, path) of task ``task``'s contiguous slice of ``files``."""
    lo, hi = task * len(files) // num_tasks, (task + 1) * len(files) // num_tasks
    return list(enumerate(files))[lo:hi]


def task_share(task: int | None, num_tasks: int | None) -> tuple[int, int]:
    """This process's (task, task count): given, or the SLURM array's, else (0, 1)."""
    if task is not None:
        return task, num_tasks or 1
    share = work_share()
    return share if share is not None else (0, num_tasks or 1)


def _records(spec: InputSpec, task: int, num_tasks: int) -> Iterator[tuple[int, int, object, str | None]]:
    """(file index, line, parsed document or skip reason, raw line) of the task's slice."""
    mine = task_files(spec.files, task, num_tasks)
    names = [os.path.basename(f) for _, f in mine]
    for rec in iter_records([f for _, f in mine], spec.text_key, spec.id_key):
        index = mine[rec.file][0]
        try:
            yield index, rec.line, parse_document(rec, spec.text_key, spec.id_key, names[rec.file]), rec
        except RecordSkip as skip:
            yield index, rec.line, skip, rec


def _docs(spec: InputSpec, task: int, num_tasks: int) -> Iterator[tuple]:
    for index, line, doc, _ in _records(spec, task, num_tasks):
        if not isinstance(doc, RecordSkip):
            yield make_key(index, line), doc.doc_id, doc.text


def run_signatures(spec: InputSpec, cfg: DedupRunConfig, run_dir: Path, task: int, num_tasks: int,
                   workers: int = 1) -> dict:
    return write_signatures(task, num_tasks, _docs(spec, task, num_tasks), run_dir, cfg.dedup, workers)


def _kept_line(rec, doc) -> str:
    if isinstance(rec.payload, bytes):
        return rec.payload.decode("utf-8").rstrip("\r\n")
    return json.dumps({"id": doc.doc_id, "text": doc.text}, ensure_ascii=False)  # a Parquet row


def run_filter(spec: InputSpec, run_dir: Path, task: int, num_tasks: int) -> dict:
    """Stage 4 for one task: its kept lines and its manifest rows."""
    done = run_dir / "manifest" / f"part-{task:05d}.done.json"
    signature = identity({"clusters": read_json(run_dir / "clusters" / "DONE.json")["signature"],
                        "task": task, "num_tasks": num_tasks})
    if is_done(done, signature):
        return {**read_json(done), "reused": True}
    # Under the unit's lease: a second process running the same unit waits, then reuses it.
    with Lease(done.with_name(f"part-{task:05d}.lease")):
        if is_done(done, signature):
            return {**read_json(done), "reused": True}
        mine = task_files(spec.files, task, num_tasks)
        key_range = (make_key(mine[0][0], 0), make_key(mine[-1][0], (1 << 32) - 1)) if mine else (0, 0)
        decisions = Decisions(run_dir, key_range)
        counts = {"kept": 0, "exact_duplicate": 0, "near_duplicate": 0, "skipped": 0}
        with atomic_open(run_dir / "kept" / f"part-{task:05d}.jsonl", "w") as kf, \
                atomic_open(run_dir / "manifest" / f"part-{task:05d}.jsonl", "w") as mf:
            for index, line, doc, rec in _records(spec, task, num_tasks):
                row = {"id": getattr(doc, "doc_id", f"{os.path.basename(spec.files[index])}:{line}"),
                       "file": spec.files[index], "line": line}
                if isinstance(doc, RecordSkip):
                    row.update(status=DROPPED, reason=doc.reason)
                    counts["skipped"] += 1
                else:
                    dup = decisions.check(make_key(index, line))
                    if dup is None:
                        row["status"] = PASSED
                        counts["kept"] += 1
                        kf.write(_kept_line(rec, doc) + "\n")
                    else:
                        row.update(status=DROPPED, reason=dup[0], duplicate_of=dup[1])
                        counts[dup[0]] += 1
                mf.write(json.dumps(row, ensure_ascii=False) + "\n")
        info = {"signature": signature, "task": task, **counts}
        write_done(done, info)
        return {**info, "reused": False}


def run_task(stage: str, spec: InputSpec, cfg: DedupRunConfig, run_dir: str | Path, task: int,
             num_tasks: int, workers: int = 1):
    """One task of one stage (what a SLURM array task runs)."""
    run_dir = Path(run_dir)
    if stage == "signatures":
        return run_signatures(spec, cfg, run_dir, task, num_tasks, workers)
    if stage == "merge":
        return merge_buckets(task, num_tasks, run_dir, cfg.dedup, cfg.stages)
    if stage == "clusters":
        if task != 0:
            raise ConfigError("the clusters stage is one task: run it with --tasks 1 (an array of one)")
        return build_clusters(run_dir, cfg.dedup, cfg.stages)
    if stage == "filter":
        return run_filter(spec, run_dir, task, num_tasks)
    raise ConfigError(f"unknown dedup stage {stage!r}: choose one of {', '.join(STAGES)}")


def _call(args: tuple):
    return run_task(*args)


def run_local(spec: InputSpec, cfg: DedupRunConfig, run_dir: str | Path, num_tasks: int,
              workers: int = 1) -> dict:
    """All four stages on this machine: ``num_tasks`` tasks per stage over ``workers`` processes."""
    run_dir = Path(run_dir)
    if len(spec.files) < num_tasks:
        raise ConfigError(f"{num_tasks} tasks need at least as many input files (got {len(spec.files)})")
    seconds = {}
    with mp_context().Pool(max(1, workers)) as pool:
        for stage in STAGES:
            start = time.monotonic()
            if stage == "clusters":
                result = [run_task(stage, spec, cfg, run_dir, 0, 1)]
            else:
                result = pool.map(_call, [(stage, spec, cfg, run_dir, t, num_tasks) for t in range(num_tasks)],
                                  chunksize=1)
            seconds[stage] = round(time.monotonic() - start, 3)
            logger.info("dedup %s: %d tasks in %.1fs", stage, len(result), seconds[stage])
    summary = read_json(run_dir / "clusters" / "DONE.json")
    return {**summary, "stage_seconds": seconds}
