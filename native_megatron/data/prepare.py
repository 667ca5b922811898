"""The prepare stage: raw inputs -> cleaned, deduplicated documents, as N independent tasks.

The inputs are split by :func:`~native_megatron.data.plan.plan_tasks` into
``tasks`` contiguous slices (by file, and by byte range inside big plain JSONL
files). Each slice goes through four steps, the first and last per task, so
the same work runs as local processes or as SLURM array tasks:

1. **clean** (per task): parse, clean, filter and fingerprint in worker processes, a
   chunk of lines at a time; write the candidates (documents that passed cleaning),
   the task's manifest rows, and its dedup signatures (``neardup`` stage 1). With
   ``tokenize`` set (no rewriting) the candidates are tokenized here too, where
   they were cleaned, so the text is parsed once.
2. **merge** (per merge task): duplicate pairs from every task's signatures (``neardup`` stage 2).
3. **clusters** (once): union-find over the pairs; each group keeps its first copy in input order.
4. **filter** (per task): drop the non-kept candidates; write the task's document shards
   (text) or its token partition (``.bin/.idx``), and its final manifest rows, with
   ``duplicate_of`` on each dropped duplicate.

The kept set is the first copy in input order, whatever the number of tasks,
so 1 task and 64 give identical manifests and datasets. Every output is
written atomically and every step marks itself done with the identity of its
inputs and settings, so a killed run redoes only the unfinished steps.

In ``{prefix}_work/prepare/``: ``plan.json``; ``dedup/`` (the staged dedup run);
per task ``task-NNNNN/``: ``clean.manifest.jsonl``, ``candidates.jsonl`` (and
``candidates.tokens`` + ``candidates.lengths.npy`` in one pass), ``clean.json``;
then ``shard-NNNNN.jsonl`` (``{"id", "file", "line", "text"}`` per kept document)
or ``part.bin/.idx`` + ``part.manifest.jsonl``, ``manifest.jsonl`` and ``filter.json``.
"""

from __future__ import annotations

import array
import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from native_megatron.data.cleaning import CleanConfig, Cleaner
from native_megatron.data.dedup import DedupConfig, Fingerprint, fingerprint, lsh_bands_rows
from native_megatron.data.executor import Done, Share, Unit, execute
from native_megatron.data.indexed import DocumentEncoder, TokenizeSettings, preload_writer, write_partition
from native_megatron.data.langid import LanguageGuess
from native_megatron.data.manifest import DROPPED, PASSED, ManifestWriter, read_manifest
from native_megatron.data.plan import plan_tasks
from native_megatron.data.readers import InputPiece, RawRecord, RecordSkip, iter_pieces, parse_document
from native_megatron.data.shards import ShardWriter, read_shard_texts
from native_megatron.data.tasks import remove_stale_temp_files
from native_megatron.data.work import Marker, WorkError, identity
from native_megatron.utils.config import ConfigError
from native_megatron.utils.io import Progress, atomic_open, atomic_write_json, read_json
from native_megatron.utils.parallel import batched, ordered_map

logger = logging.getLogger(__name__)

CHUNK_RECORDS = 256
STEPS = ("clean", "merge", "clusters", "filter")


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
    # Independent slices of the input; the answer does not depend on it.
    tasks: int = 1
    # Tokenize where documents are cleaned (no rewriting follows): tasks write token partitions.
    tokenize: TokenizeSettings | None = None
    # What the work was made from (inputs and settings); a task's done marker carries it.
    inputs_identity: str = ""
    # With tokenize: the tokenizer's identity (content hash, vocabulary size, token width, special ids).
    tokenizer: dict | None = None

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ConfigError("run.tasks must be at least 1")


@dataclass
class PrepareResult:
    """The finished stage: its shards (text) or partitions (token prefixes), and per-task manifests."""

    shards: list[str]
    partitions: list[str]
    manifests: list[str]
    stats: dict[str, Any] = field(default_factory=dict)


def dedup_enabled(config: DedupConfig) -> bool:
    return config.exact or config.near


def dedup_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "dedup"


def task_dir(work_dir: Path, task: int) -> Path:
    return Path(work_dir) / f"task-{task:05d}"


# ---- the plan ----------------------------------------------------------------------


def plan_path(work_dir: Path) -> Path:
    return Path(work_dir) / "plan.json"


def read_plan(path: Path) -> dict:
    """``plan.json``, or one line saying it is damaged."""
    try:
        made = read_json(path)
    except (ValueError, UnicodeDecodeError):
        made = None
    if isinstance(made, dict) and "fingerprint" in made and "identity" not in made:
        raise WorkError(f"{path} was written by an earlier version of native_megatron, whose work this one does "
                        f"not reuse; pass --overwrite to redo the preprocessing")
    if not isinstance(made, dict) or not {"identity", "tasks", "files", "pieces"} <= set(made):
        raise WorkError(f"{path} is damaged; pass --overwrite to redo the preprocessing (its work cannot be "
                        f"trusted without it)")
    return made


def load_plan(settings: PrepareSettings, work_dir: Path) -> list[list[InputPiece]]:
    """The task slices: read from ``plan.json``, or computed and written (identically by any task),
    with the inputs, their identity and whether tokenizing happens here (``one_pass``)."""
    path = plan_path(work_dir)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    if path.exists():
        plan = read_plan(path)
        if plan.get("identity") == settings.inputs_identity and plan.get("tasks") == settings.tasks:
            return [[InputPiece(**p) for p in task] for task in plan["pieces"]]
        raise ConfigError(f"{path} was written for other inputs, settings or task count; start over with "
                          f"--overwrite")
    pieces = plan_tasks(settings.files, settings.tasks)
    atomic_write_json(path, {"identity": settings.inputs_identity, "tasks": settings.tasks, "files": settings.files,
                             "one_pass": settings.tokenize is not None, "settings": settings_digest(settings),
                             "pieces": [[p.to_json() for p in task] for task in pieces]})
    return pieces


# ---- worker side -------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(settings: PrepareSettings) -> None:
    _WORKER["settings"] = settings
    _WORKER["cleaner"] = Cleaner(settings.clean)
    _WORKER["names"] = [os.path.basename(f) for f in settings.files]
    _WORKER["encoder"] = DocumentEncoder(settings.tokenize) if settings.tokenize is not None else None


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
    tokens: np.ndarray | None = None


def _process_chunk(chunk: list[RawRecord]) -> tuple[list[Outcome], Counter, float]:
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
        fp = fingerprint(v.text, s.dedup) if dedup_enabled(s.dedup) else None
        out.append(Outcome(rec.file, rec.line, doc.doc_id, text=v.text, fp=fp, language=v.language))
    encoder: DocumentEncoder | None = _WORKER["encoder"]
    seconds = 0.0
    if encoder is not None:
        start = time.perf_counter()
        passed = [o for o in out if o.reason is None]
        for o, ids in zip(passed, encoder.encode([o.text for o in passed])):
            o.tokens = ids
        seconds = time.perf_counter() - start
    return out, cleaner.counts - before, seconds


# ---- step 1: clean -----------------------------------------------------------------


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


CLEAN_OUTPUTS = ("clean.manifest.jsonl", "candidates.jsonl", "candidates.tokens", "candidates.lengths.npy")
FILTER_OUTPUTS = ("manifest.jsonl", "part.bin", "part.idx", "part.manifest.jsonl")


def clean_marker(settings: PrepareSettings, work_dir: Path, task: int) -> Marker:
    """The clean step's marker for ``task``: its identity is the run's inputs identity and the task's place."""
    return Marker(task_dir(work_dir, task) / "clean.json",
                  {"identity": identity({"step": "clean", "identity": settings.inputs_identity, "task": task,
                                         "tasks": settings.tasks})})


def _clean_files(settings: PrepareSettings, work_dir: Path, task: int) -> list[Path]:
    """What the clean step of ``task`` wrote: its candidates, and its dedup signature files."""
    tdir = task_dir(work_dir, task)
    files = [tdir / name for name in CLEAN_OUTPUTS]
    if dedup_enabled(settings.dedup):
        from native_megatron.data.neardup.store import task_dir as signatures_dir

        sdir = signatures_dir(dedup_dir(work_dir), task)
        files += sorted(p for p in sdir.iterdir() if not p.name.startswith(".") and p.name != "DONE.json")
    return files


def _remove_clean_temporaries(settings: PrepareSettings, work_dir: Path, task: int) -> None:
    """What an earlier, dead holder of this clean unit left half-written (called under its lease)."""
    from native_megatron.data.neardup.store import remove_stale_temporaries
    from native_megatron.data.neardup.store import task_dir as signatures_dir

    tdir = task_dir(work_dir, task)
    tdir.mkdir(parents=True, exist_ok=True)
    for name in CLEAN_OUTPUTS:
        remove_stale_temporaries(tdir, name)
    if dedup_enabled(settings.dedup):
        sdir = signatures_dir(dedup_dir(work_dir), task)
        remove_stale_temporaries(sdir)
        # A marker left by an earlier attempt must not stand for the signatures written now.
        (sdir / "DONE.json").unlink(missing_ok=True)


def clean_unit(settings: PrepareSettings, work_dir: Path, task: int, show_progress: bool = True) -> Unit:
    """Step 1's unit for one task; a finished task whose files check is not redone."""
    return Unit(f"task {task}", clean_marker(settings, work_dir, task),
                partial(_clean, settings, work_dir, task, show_progress),
                cleanup=partial(_remove_clean_temporaries, settings, work_dir, task))


def _clean(settings: PrepareSettings, work_dir: Path, task: int, show_progress: bool) -> tuple[dict, list]:
    from native_megatron.data.neardup import write_fingerprints

    pieces = load_plan(settings, work_dir)[task]
    tdir = task_dir(work_dir, task)
    start = time.monotonic()
    read_stats: dict[str, Any] = {}
    records = iter_pieces(pieces, settings.text_key, settings.id_key, read_stats, settings.url_key)
    writer = _CandidateWriter(settings)
    with atomic_open(tdir / "clean.manifest.jsonl", "w") as mf, \
            atomic_open(tdir / "candidates.jsonl", "w") as cf, \
            atomic_open(tdir / "candidates.tokens", "wb") as tf, \
            Progress(None, f"clean {task + 1}/{settings.tasks}" if settings.tasks > 1 else "prepare",
                     enabled=show_progress) as bar:
        fingerprints = writer.run(records, ManifestWriter(mf), cf, tf, bar)
        if dedup_enabled(settings.dedup):
            write_fingerprints(task, settings.tasks, fingerprints, dedup_dir(work_dir), settings.dedup)
        else:
            for _ in fingerprints:
                pass
    with atomic_open(tdir / "candidates.lengths.npy", "wb") as f:
        np.save(f, np.frombuffer(writer.lengths, dtype=np.int64), allow_pickle=False)
    manifest = writer.manifest
    result = {"documents_in": sum(manifest.status.values()), "candidates": manifest.status[PASSED],
              "dropped_by_reason": dict(sorted(manifest.reasons.items())),
              "cleaning_steps": dict(sorted(writer.clean_counts.items())),
              "empty_files": read_stats.get("empty_files", []), "read_errors": read_stats.get("read_errors", {}),
              # The token width of candidates.tokens: the filter reads them with it, whatever it is given.
              "token_dtype": writer.dtype, "tokenize_seconds": round(writer.tokenize_seconds, 3),
              "seconds": round(time.monotonic() - start, 3)}
    return result, _clean_files(settings, work_dir, task)


class _CandidateWriter:
    """The clean step's loop: outcomes of the workers -> manifest rows, candidates and (one pass) tokens."""

    def __init__(self, settings: PrepareSettings) -> None:
        self.settings = settings
        self.clean_counts: Counter = Counter()
        self.skips = SkipLog()
        self.lengths = array.array("q")
        self.tokenize_seconds = 0.0
        self.dtype = None if settings.tokenize is None else np.dtype(DocumentEncoder.dtype_of(settings.tokenize)).name
        self.manifest: ManifestWriter | None = None

    def run(self, records, manifest: ManifestWriter, cf, tf, bar) -> Iterator[tuple[int, str, Fingerprint]]:
        """Clean the slice, writing the manifest and candidates; yields the candidates' fingerprints,
        so that the signatures are built as documents arrive and no list of them is held."""
        from native_megatron.data.neardup import make_key

        s = self.settings
        self.manifest = manifest
        results = ordered_map(_process_chunk, batched(records, CHUNK_RECORDS), s.workers,
                              initializer=_init_worker, initargs=(s,))
        for outcomes, counts, seconds in results:
            self.clean_counts.update(counts)
            self.tokenize_seconds += seconds
            for o in outcomes:
                row = {"id": o.doc_id, "file": s.files[o.file], "line": o.line}
                if o.reason is not None:
                    row.update(status=DROPPED, reason=o.reason)
                    if o.detail:
                        row["detail"] = o.detail
                    self.skips.log(row)
                else:
                    row["status"] = PASSED
                    key = make_key(o.file, o.line)
                    candidate = {"key": key, "id": o.doc_id, "file": row["file"], "line": o.line,
                                 "chars": len(o.text)}
                    if s.tokenize is not None:
                        tf.write(o.tokens.tobytes())
                        self.lengths.append(o.tokens.size)
                    else:
                        candidate["text"] = o.text
                    cf.write(json.dumps(candidate, ensure_ascii=False) + "\n")
                    if o.fp is not None:
                        yield key, o.doc_id, o.fp
                if o.language is not None:
                    row.update(language=o.language.language, language_score=o.language.score)
                manifest.write(row)
            bar.update(len(outcomes))


# ---- steps 2 and 3: merge and clusters ------------------------------------------------


def _dedup_config(settings: PrepareSettings) -> DedupConfig:
    """The dedup settings with ``against`` resolved from an output prefix to its dedup run directory."""
    against = settings.dedup.against
    if against:
        candidates = [Path(against + "_work") / "prepare" / "dedup", Path(against)]
        run = next((c for c in candidates if (c / "clusters" / "DONE.json").exists()), None)
        if run is None:
            raise ConfigError(f"dedup.against {against}: no finished dedup there (looked for "
                              f"{candidates[0]} and {candidates[1]}/clusters); run that preprocessing to the end first")
        against = str(run)
    return dataclasses.replace(settings.dedup, against=against)


def merge_units(settings: PrepareSettings, work_dir: Path) -> tuple[int, Callable[[int], Unit]]:
    """Step 2's units (band x hash-range slices, ``neardup/merge.py``): how many, how to build one."""
    if not dedup_enabled(settings.dedup):
        return 0, lambda i: None
    from native_megatron.data.neardup import StagesConfig
    from native_megatron.data.neardup.merge import merge_stage

    return merge_stage(dedup_dir(work_dir), _dedup_config(settings), StagesConfig())


def clusters_units(settings: PrepareSettings, work_dir: Path) -> tuple[int, Callable[[int], Unit]]:
    """Step 3's one unit: the groups and which document each drop is a copy of."""
    if not dedup_enabled(settings.dedup):
        return 0, lambda i: None
    from native_megatron.data.neardup import StagesConfig
    from native_megatron.data.neardup.clusters import clusters_unit

    return 1, lambda _: clusters_unit(dedup_dir(work_dir), _dedup_config(settings), StagesConfig())


def _clusters_identity(settings: PrepareSettings, work_dir: Path) -> str | None:
    if not dedup_enabled(settings.dedup):
        return None
    path = dedup_dir(work_dir) / "clusters" / "DONE.json"
    if not path.exists():
        raise ConfigError(f"{work_dir}: the dedup clusters step has not run; run --stage clusters "
                          f"(after every merge task) before --stage filter")
    return read_json(path).get("identity")


# ---- step 4: filter ------------------------------------------------------------------


def filter_marker(settings: PrepareSettings, work_dir: Path, task: int, clean: dict, clusters: str | None) -> Marker:
    """The filter step's marker: its identity covers the clean unit it reads (and that unit's files)
    and the clusters it applies."""
    return Marker(task_dir(work_dir, task) / "filter.json",
                  {"identity": identity({"step": "filter", "clean": clean["identity"], "clean_files": clean["files"],
                                         "clusters": clusters})})


def finished_clean(settings: PrepareSettings, work_dir: Path, task: int, verify: bool = True) -> dict:
    """The clean unit the filter of ``task`` reads; a WorkError when it is unfinished or its files changed."""
    marker = clean_marker(settings, work_dir, task)
    done = marker.load(verify)
    if done is None:
        if marker.problem is not None:
            raise WorkError(f"{marker.problem}: rerun --stage clean (task {task}) to redo it")
        raise WorkError(f"prepare task {task}: its clean step has not finished; run --stage clean first")
    return done


def filter_unit(settings: PrepareSettings, work_dir: Path, task: int) -> Unit:
    """Step 4's unit for one task: its kept documents (shards or a token partition) and final manifest
    rows. Building it checks the clean unit's files it reads."""
    clean = finished_clean(settings, work_dir, task)
    marker = filter_marker(settings, work_dir, task, clean, _clusters_identity(settings, work_dir))
    return Unit(f"task {task}", marker, partial(_filter, settings, work_dir, task, clean),
                cleanup=partial(_remove_filter_temporaries, task_dir(work_dir, task)))


def _remove_filter_temporaries(tdir: Path) -> None:
    """What an earlier, dead holder of a filter unit left (called under its lease)."""
    from native_megatron.data.neardup.store import remove_stale_temporaries

    for old in tdir.glob("shard-*.jsonl"):
        old.unlink()
    remove_stale_temp_files(tdir, "part")
    for name in ("manifest.jsonl", "part.manifest.jsonl", "shard-*.jsonl"):
        remove_stale_temporaries(tdir, name)


def _filter(settings: PrepareSettings, work_dir: Path, task: int, clean: dict) -> tuple[dict, list]:
    tdir = task_dir(work_dir, task)
    start = time.monotonic()
    decisions = None
    pieces = load_plan(settings, work_dir)[task]
    if dedup_enabled(settings.dedup) and pieces:
        from native_megatron.data.neardup import Decisions, make_key
        from native_megatron.data.neardup.store import MAX_LINE

        key_range = (make_key(pieces[0].file_index, 0), make_key(pieces[-1].file_index, MAX_LINE))
        decisions = Decisions(dedup_dir(work_dir), key_range)
    candidates = read_shard_texts(str(tdir / "candidates.jsonl"))
    # One entry per candidate, in order: None (kept) or (reason, kept id).
    verdicts: list[tuple[str, str] | None] = []
    chars_out = 0

    def kept() -> Iterator[tuple[int, dict, dict]]:
        """(position among the candidates, candidate, its dataset row) of each kept candidate."""
        nonlocal chars_out
        for i, c in enumerate(candidates):
            dup = decisions.check(c["key"]) if decisions is not None else None
            verdicts.append(dup)
            if dup is None:
                chars_out += c["chars"]
                yield i, c, {"id": c["id"], "file": c["file"], "line": c["line"]}

    part, shards = None, None
    if settings.tokenize is not None:
        dtype = np.dtype(clean["token_dtype"]).type   # megatron-core wants the scalar type
        offsets = np.concatenate([[0], np.cumsum(np.load(tdir / "candidates.lengths.npy"))])
        tokens = np.memmap(tdir / "candidates.tokens", dtype=dtype, mode="r") if offsets[-1] else None
        part = write_partition(((row, tokens[offsets[i]:offsets[i + 1]]) for i, _, row in kept()),
                               str(tdir / "part"), dtype)
    else:
        shards = ShardWriter(tdir, settings.shard_size)
        for _, c, row in kept():
            shards.write({**row, "text": c["text"]})
        shards.close()
    with atomic_open(tdir / "manifest.jsonl", "w") as mf:
        manifest = ManifestWriter(mf)
        passed = iter(verdicts)
        for row in read_manifest(tdir / "clean.manifest.jsonl"):
            if row["status"] == PASSED:
                dup = next(passed)
                if dup is not None:
                    row = _reorder({**row, "status": DROPPED, "reason": dup[0], "duplicate_of": dup[1]})
            manifest.write(row)
    result = {"documents_in": sum(manifest.status.values()), "documents_kept": manifest.status[PASSED],
              "dropped_by_reason": dict(sorted(manifest.reasons.items())), "characters_out": chars_out,
              "shards": [str(p) for p in shards.paths] if shards is not None else [],
              "partition": str(tdir / "part") if part and part["documents"] else None,
              "tokens": part["tokens"] if part else 0, "max_token_id": part["max_id"] if part else -1,
              "seconds": round(time.monotonic() - start, 3)}
    files = [tdir / "manifest.jsonl", *result["shards"]]
    if part is not None:
        files += [tdir / "part.bin", tdir / "part.idx", tdir / "part.manifest.jsonl"]
    return result, files


def _reorder(row: dict) -> dict:
    """Manifest columns in the usual order: identity, status and reason, then the rest."""
    head = ("id", "file", "line", "status", "reason", "duplicate_of")
    return {**{k: row[k] for k in head if k in row}, **{k: v for k, v in row.items() if k not in head}}


# ---- the whole stage -----------------------------------------------------------------


def run_step(step: str, settings: PrepareSettings, work_dir: Path, task: int | None = None,
             num_tasks: int | None = None, show_progress: bool = True) -> list[Done]:
    """One step: this process's share of its units (``task`` of ``num_tasks``, a SLURM array task), or
    every unit here when ``task`` is None. Clean and filter have one unit per prepare task; merge has
    its band x range units, split over ``num_tasks`` (default: ``run.workers``)."""
    load_plan(settings, work_dir)
    here = task is None
    if step == "merge":
        count, unit = merge_units(settings, work_dir)
        share = Share() if here else Share(task, num_tasks or max(1, settings.workers))
        return execute("dedup merge", count, unit, share, settings.workers if here else 1, progress=show_progress)
    if step == "clusters":
        if not here and task != 0:
            raise ConfigError("the clusters step is one task: run it outside an array, or as --array=0")
        count, unit = clusters_units(settings, work_dir)
        return execute("dedup clusters", count, unit, describe=lambda d: _clusters_line(d.record))
    if not here and not 0 <= task < settings.tasks:
        raise ConfigError(f"prepare task {task} is outside 0..{settings.tasks - 1} (run.tasks={settings.tasks})")
    share = Share() if here else Share(task, settings.tasks)
    if step == "clean":
        # One unit at a time: each cleans its slice over run.workers processes, with its own bar.
        return execute("prepare clean", settings.tasks, partial(clean_unit, settings, work_dir,
                       show_progress=show_progress), share, describe=_clean_line, progress=False)
    if step == "filter":
        workers = settings.workers if here and settings.tasks > 1 else 1
        if workers > 1 and settings.tokenize is not None:
            preload_writer()    # import megatron-core once here (seconds), not in every forked worker
        return execute("prepare filter", settings.tasks, partial(filter_unit, settings, work_dir), share, workers,
                       progress=show_progress)
    raise ConfigError(f"unknown prepare step {step!r}: choose one of {', '.join(STEPS)}")


def _clean_line(done: Done) -> str:
    return f"{done.record['documents_in']} documents in, {done.record['candidates']} passed cleaning"


def _clusters_line(summary: dict) -> str:
    pairs = summary["pairs"]
    line = (f"{pairs['near']:,} near and {pairs['exact']:,} exact pairs; {summary['groups']:,} groups keep their "
            f"first copy and drop {summary['dropped']:,} documents")
    if summary.get("against"):
        line += f", {summary['against_matches']:,} of them copies of documents in {summary['against']}"
    return line


def run_prepare(settings: PrepareSettings, work_dir: Path, show_progress: bool = True) -> PrepareResult:
    """Every step of every task on this machine (finished steps are reused), then the result."""
    start = time.monotonic()
    reused = {}
    for step in STEPS:
        results = run_step(step, settings, work_dir, show_progress=show_progress)
        reused[step] = sum(d.reused for d in results)
    result = collect(settings, work_dir, verify=False)    # every unit was just checked or written
    result.stats["seconds"] = round(time.monotonic() - start, 3)
    # Per step, how many tasks (merge: units) were found finished and not redone.
    result.stats["reused"] = reused
    return result


def collect(settings: PrepareSettings, work_dir: Path, verify: bool = True) -> PrepareResult:
    """The finished stage, from every task's markers; a ConfigError names unfinished tasks, a WorkError
    a file that is not what its step wrote (``verify=False``: the caller has just checked them)."""
    clean, filtered = _finished_tasks(settings, work_dir, verify)
    return PrepareResult(
        shards=[s for f in filtered for s in f["shards"]],
        partitions=[f["partition"] for f in filtered if f["partition"]],
        manifests=[str(task_dir(work_dir, t) / "manifest.jsonl") for t in range(settings.tasks)],
        stats=_prepare_stats(settings, work_dir, clean, filtered))


def _finished_tasks(settings: PrepareSettings, work_dir: Path, verify: bool) -> tuple[list[dict], list[dict]]:
    """Every task's clean and filter markers, or one line naming what is unfinished or damaged."""
    clean, filtered, missing = [], [], []
    try:
        clusters = _clusters_identity(settings, work_dir)
        clustered = True
    except ConfigError:     # no clusters step yet: no task can have filtered
        clusters, clustered = None, False
    for t in range(settings.tasks):
        # Clean's files were checked by the filter that read them (its identity holds their checksums).
        c = clean_marker(settings, work_dir, t).load(verify=False)
        fm = filter_marker(settings, work_dir, t, c, clusters) if c and clustered else None
        f = fm.load(verify) if fm is not None else None
        if fm is not None and fm.problem is not None:
            raise WorkError(f"{fm.problem}: rerun --stage filter (task {t}), or the whole command, to redo it")
        if c is None or f is None:
            missing.append(t)
        clean.append(c)
        filtered.append(f)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ConfigError(f"prepare: {len(missing)} of {settings.tasks} tasks are unfinished ({shown}); "
                          f"run the remaining steps (--stage clean, merge, clusters, filter) first")
    return clean, filtered


def _prepare_stats(settings: PrepareSettings, work_dir: Path, clean: list[dict], filtered: list[dict]) -> dict:
    """The stage's counts, summed over its tasks' markers."""
    reasons: Counter = Counter()
    steps: Counter = Counter()
    read_errors: dict = {}
    for c, f in zip(clean, filtered):
        reasons.update(f["dropped_by_reason"])
        steps.update(c["cleaning_steps"])
        read_errors.update(c["read_errors"])
    dedup_stats: dict[str, Any] = {"exact": settings.dedup.exact, "near": settings.dedup.near,
                                   "bands_rows": list(lsh_bands_rows(settings.dedup)) if settings.dedup.near else None,
                                   "threshold": settings.dedup.threshold, "against": settings.dedup.against or None}
    cpath = dedup_dir(work_dir) / "clusters" / "DONE.json"
    if dedup_enabled(settings.dedup) and cpath.exists():
        summary = read_json(cpath)
        dedup_stats.update({k: summary[k] for k in ("pairs", "groups", "dropped", "against_matches")})
    stats = {
        "input_files": len(settings.files),
        "tasks": settings.tasks,
        "documents_in": sum(f["documents_in"] for f in filtered),
        "documents_kept": sum(f["documents_kept"] for f in filtered),
        "documents_dropped": sum(f["documents_in"] - f["documents_kept"] for f in filtered),
        "dropped_by_reason": dict(sorted(reasons.items())),
        "cleaning_steps": dict(sorted(steps.items())),
        "characters_out": sum(f["characters_out"] for f in filtered),
        "dedup": dedup_stats,
        "empty_files": [p for c in clean for p in c["empty_files"]],
        "read_errors": read_errors,
        "shards": sum(len(f["shards"]) for f in filtered),
        "seconds": round(sum(c["seconds"] for c in clean) + sum(f["seconds"] for f in filtered), 3),
        "one_pass": settings.tokenize is not None,
    }
    if settings.tokenize is not None:
        stats["tokens"] = sum(f["tokens"] for f in filtered)
        stats["tokenize_seconds"] = round(sum(c["tokenize_seconds"] for c in clean), 3)
        stats["max_token_id"] = max((f["max_token_id"] for f in filtered), default=-1)
    return stats


def settings_digest(settings: PrepareSettings) -> dict:
    """What the stage's output depends on (JSON), for the inputs identity and the plan."""
    out = {"clean": asdict(settings.clean), "dedup": asdict(settings.dedup), "shard_size": settings.shard_size,
           "text_key": settings.text_key, "id_key": settings.id_key, "url_key": settings.url_key}
    if settings.tokenize is not None:
        # One pass tokenizes here: the tokenizer's content, vocabulary and token width are settings too.
        tokenize = asdict(settings.tokenize)
        for key in ("workers", "batch_size", "tokenizer"):   # how fast, and where the file lies: not what
            tokenize.pop(key)
        out["tokenize"] = tokenize
        out["tokenizer"] = settings.tokenizer
    out = json.loads(json.dumps(out))
    for k in ("band_ranges", "exact_ranges"):
        out["dedup"].pop(k, None)   # how the merge is split, never what it finds
    return out
