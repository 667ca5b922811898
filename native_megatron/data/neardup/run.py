"""The four stages over JSONL/Parquet files as units for the executor (:mod:`native_megatron.data.executor`):
one stage task at a time (a SLURM array task), or every stage locally.

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
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from native_megatron.data.dedup import DedupConfig
from native_megatron.data.executor import Done, Share, Unit, execute
from native_megatron.data.manifest import DROPPED, PASSED
from native_megatron.data.neardup.clusters import Decisions, clusters_unit
from native_megatron.data.neardup.merge import merge_stage
from native_megatron.data.neardup.signatures import fingerprints, signatures_unit
from native_megatron.data.neardup.store import StagesConfig, make_key, read_json, remove_stale_temporaries
from native_megatron.data.readers import RecordSkip, iter_records, parse_document
from native_megatron.data.work import Marker, identity
from native_megatron.utils.config import ConfigError
from native_megatron.utils.io import atomic_open

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


def _fingerprinted(spec: InputSpec, cfg: DedupRunConfig, task: int, num_tasks: int, workers: int) -> Iterator[tuple]:
    return fingerprints(_docs(spec, task, num_tasks), cfg.dedup, workers)


def _kept_line(rec, doc) -> str:
    if isinstance(rec.payload, bytes):
        return rec.payload.decode("utf-8").rstrip("\r\n")
    return json.dumps({"id": doc.doc_id, "text": doc.text}, ensure_ascii=False)  # a Parquet row


def filter_unit(spec: InputSpec, run_dir: Path, task: int, num_tasks: int) -> Unit:
    """Stage 4's unit for one task: its kept lines and its manifest rows."""
    out, clusters = run_dir / "manifest", run_dir / "clusters" / "DONE.json"
    if not clusters.exists():
        raise ConfigError(f"{run_dir}: the clusters stage (3) has not finished; run it before the filter stage")
    unit_identity = identity({"clusters": read_json(clusters).get("identity"), "task": task, "num_tasks": num_tasks})
    return Unit(f"part-{task:05d}", Marker(out / f"part-{task:05d}.done.json", {"identity": unit_identity}),
                partial(_filter, spec, run_dir, task, num_tasks), lease=out / f"part-{task:05d}.lease",
                cleanup=partial(_remove_filter_temporaries, run_dir, task))


def _remove_filter_temporaries(run_dir: Path, task: int) -> None:
    for sub in ("kept", "manifest"):
        remove_stale_temporaries(run_dir / sub, f"part-{task:05d}.jsonl")


def _filter(spec: InputSpec, run_dir: Path, task: int, num_tasks: int) -> tuple[dict, list]:
    mine = task_files(spec.files, task, num_tasks)
    key_range = (make_key(mine[0][0], 0), make_key(mine[-1][0], (1 << 32) - 1)) if mine else (0, 0)
    decisions = Decisions(run_dir, key_range)
    counts = {"kept": 0, "exact_duplicate": 0, "near_duplicate": 0, "skipped": 0}
    kept, manifest = run_dir / "kept" / f"part-{task:05d}.jsonl", run_dir / "manifest" / f"part-{task:05d}.jsonl"
    with atomic_open(kept, "w") as kf, atomic_open(manifest, "w") as mf:
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
    return {"task": task, **counts}, [kept, manifest]


def stage_units(stage: str, spec: InputSpec, cfg: DedupRunConfig, run_dir: str | Path, num_tasks: int,
                workers: int = 1) -> tuple[int, Callable[[int], Unit]]:
    """A stage's units for the executor: how many, and how to build unit ``i``. ``workers``: the
    fingerprinting processes inside each signatures unit."""
    run_dir = Path(run_dir)
    if stage == "signatures":
        return num_tasks, lambda t: signatures_unit(t, num_tasks, run_dir, cfg.dedup, partial(
            _fingerprinted, spec, cfg, t, num_tasks, workers))
    if stage == "merge":
        return merge_stage(run_dir, cfg.dedup, cfg.stages)
    if stage == "clusters":
        return 1, lambda _: clusters_unit(run_dir, cfg.dedup, cfg.stages)
    if stage == "filter":
        return num_tasks, lambda t: filter_unit(spec, run_dir, t, num_tasks)
    raise ConfigError(f"unknown dedup stage {stage!r}: choose one of {', '.join(STAGES)}")


def run_task(stage: str, spec: InputSpec, cfg: DedupRunConfig, run_dir: str | Path, task: int | None,
             num_tasks: int, workers: int = 1) -> list[Done]:
    """Task ``task`` of ``num_tasks`` of one stage (what a SLURM array task runs), or every task here
    (``task`` None): signatures and filter, unit ``task``; merge, the units ``p % num_tasks == task``."""
    if stage == "clusters" and task not in (None, 0):
        raise ConfigError("the clusters stage is one task: run it with --tasks 1 (an array of one)")
    count, unit = stage_units(stage, spec, cfg, run_dir, num_tasks, workers)
    share = Share() if task is None or stage == "clusters" else Share(task, num_tasks)
    return execute(f"dedup {stage}", count, unit, share)


def run_local(spec: InputSpec, cfg: DedupRunConfig, run_dir: str | Path, num_tasks: int,
              workers: int = 1) -> dict:
    """All four stages on this machine: ``num_tasks`` tasks per stage, ``workers`` units at a time."""
    run_dir = Path(run_dir)
    if len(spec.files) < num_tasks:
        raise ConfigError(f"{num_tasks} tasks need at least as many input files (got {len(spec.files)})")
    seconds = {}
    for stage in STAGES:
        start = time.monotonic()
        count, unit = stage_units(stage, spec, cfg, run_dir, num_tasks)
        execute(f"dedup {stage}", count, unit, Share(), workers)
        seconds[stage] = round(time.monotonic() - start, 3)
    summary = read_json(run_dir / "clusters" / "DONE.json")
    return {**summary, "stage_seconds": seconds}
