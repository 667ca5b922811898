"""Raw corpus -> clean -> dedup -> tokenize -> Megatron .bin/.idx, with a manifest.

The configuration (:class:`PreprocessConfig`) is checked, the inputs found, the
tokenizer loaded and the output directory proven writable before any work
starts; a text key that the inputs do not have is refused then too. Prepare
runs as ``run.tasks`` independent tasks (:mod:`native_megatron.data.prepare`),
here or as SLURM array tasks, one step at a time (``run.stage``). Stages write
into ``{prefix}_work/`` and mark themselves done, so a rerun of the same
command reuses finished work and a changed command is refused
(``output.overwrite`` starts over). Outputs beside the prefix:

- ``{prefix}_text_document.bin/.idx``: the dataset;
- ``{prefix}_manifest.jsonl``: one row per input line, ``kept`` or ``dropped`` with a reason;
- ``{prefix}_stats.json``: counts per status and reason, tokens, timings;
- ``{prefix}_config.yaml``: the resolved configuration.

A run that keeps no document writes the manifest and stats but no dataset, and fails.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from native_megatron.data.cleaning import CleanConfig
from native_megatron.data.dedup import DedupConfig
from native_megatron.data.executor import Share
from native_megatron.data.indexed import (
    TokenizeSettings,
    dataset_identity,
    dataset_prefix,
    partition_manifests,
    publish_dataset,
    run_tokenize,
)
from native_megatron.data.manifest import DROPPED, PASSED, ManifestWriter, merge_stage_rows, read_manifest
from native_megatron.data.plan import splittable
from native_megatron.data.prepare import (
    PrepareResult,
    PrepareSettings,
    collect,
    plan_path,
    read_plan,
    run_prepare,
    run_step,
    settings_digest,
)
from native_megatron.data.readers import InputError, check_text_key, expand_inputs
from native_megatron.data.tasks import StageResult
from native_megatron.data.tokenizer import load_tokenizer
from native_megatron.data.work import Lease
from native_megatron.utils.config import ConfigError, dump_yaml
from native_megatron.utils.io import atomic_open, atomic_write_json, check_writable_dir

logger = logging.getLogger(__name__)


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)
    text_key: str = "text"
    id_key: str = "id"
    # The documents' URL (JSON key or Parquet column), for clean.quality's URL blocklist; "" for none.
    url_key: str = "url"


@dataclass
class TokenizeConfig:
    tokenizer: str = ""
    eod_token: str | None = None
    append_eod: bool = True
    add_bos: bool = False
    batch_size: int = 64

    def validate(self) -> None:
        if not self.tokenizer:
            raise ConfigError("no tokenizer: pass --tokenizer PATH (a .model, a tokenizer.json or a directory)")
        if self.batch_size < 1:
            raise ConfigError("tokenize.batch_size must be at least 1")


@dataclass
class OutputConfig:
    prefix: str = ""
    # Documents per text shard when rewriting follows: the unit of the rewrite stage and of its resumption.
    shard_size: int = 20_000
    overwrite: bool = False

    def validate(self) -> None:
        if not self.prefix:
            raise ConfigError("no output: pass --output-prefix PREFIX")
        if self.shard_size < 1:
            raise ConfigError("output.shard_size must be at least 1")


PREPARE_STEPS = ("clean", "merge", "clusters", "filter")
STAGES = ("all", "prepare", *PREPARE_STEPS, "rewrite", "tokenize")


@dataclass
class RunConfig:
    # all, or one stage: prepare (its steps: clean, merge, clusters, filter), rewrite (when
    # rewriting is configured), tokenize. A SLURM array runs the steps one job at a time.
    stage: Literal["all", "prepare", "clean", "merge", "clusters", "filter", "rewrite", "tokenize"] = "all"
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    progress: bool = True
    # Independent slices of the input for prepare (by file, and by byte range in big plain
    # JSONL files), each resumable on its own. 0: the job array's size inside a SLURM array,
    # else one task per 256 MB of input. The output does not depend on it.
    tasks: int = 0
    # Run only this prepare task (clean, filter) or merge task; -1: the SLURM array index
    # inside an array, else every task here.
    task: int = -1

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError("run.workers must be at least 1")
        if self.tasks < 0 or self.task < -1:
            raise ConfigError("run.tasks must be at least 0 (0: automatic) and run.task at least -1 (-1: all)")
        if self.task >= 0 and self.tasks and self.task >= self.tasks:
            raise ConfigError(f"run.task {self.task} is outside 0..{self.tasks - 1} (run.tasks={self.tasks})")


@dataclass
class PreprocessConfig:
    input: InputConfig = field(default_factory=InputConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class Paths:
    prefix: str
    work: Path
    prepare: Path
    tokenize: Path
    dataset: str
    manifest: str
    stats: str
    config: str

    @classmethod
    def of(cls, prefix: str) -> "Paths":
        work = Path(prefix + "_work")
        return cls(prefix, work, work / "prepare", work / "tokenize", dataset_prefix(prefix),
                   prefix + "_manifest.jsonl", prefix + "_stats.json", prefix + "_config.yaml")


# Input bytes per prepare task when run.tasks is 0 outside a job array.
AUTO_TASK_BYTES = 256 << 20


def _inputs_identity(files: list[str], settings: PrepareSettings, one_pass: bool) -> str:
    """The identity of the prepare work: each input (path, size, modification time) and every setting
    its output depends on (the tokenizer's content too, when tokenizing happens in prepare)."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    digest = settings_digest(settings)
    digest["one_pass"] = one_pass
    h.update(json.dumps(digest, sort_keys=True).encode())
    return h.hexdigest()


def _share(cfg: PreprocessConfig) -> tuple[int | None, int | None]:
    """(this process's task or None for all, the array's task count or None)."""
    if cfg.run.task >= 0:
        return cfg.run.task, None
    share = Share.of()   # the executor's reading of a SLURM array
    return (share.task, share.num_tasks) if share.task is not None else (None, None)


def _task_count(cfg: PreprocessConfig, files: list[str], array_count: int | None) -> int:
    if cfg.run.tasks:
        return cfg.run.tasks
    if array_count:
        return array_count
    sizes = [os.path.getsize(f) for f in files]
    # A compressed or Parquet file is one task's at most: more tasks than such pieces would idle.
    pieces = sum(-(-size // AUTO_TASK_BYTES) if splittable(f) else 1 for f, size in zip(files, sizes))
    return max(1, min(pieces, -(-sum(sizes) // AUTO_TASK_BYTES)))


def _tokenize_settings(cfg: PreprocessConfig) -> TokenizeSettings:
    return TokenizeSettings(cfg.tokenize.tokenizer, cfg.tokenize.eod_token, cfg.tokenize.append_eod,
                            cfg.tokenize.add_bos, cfg.tokenize.batch_size, cfg.run.workers)


def _settings(cfg: PreprocessConfig, files: list[str], tasks: int, one_pass: bool, tokenizer: dict,
              inputs_identity: str = "") -> PrepareSettings:
    return PrepareSettings(files, cfg.input.text_key, cfg.input.id_key, cfg.clean, cfg.dedup,
                           cfg.output.shard_size, cfg.run.workers, url_key=cfg.input.url_key or None,
                           tasks=tasks, tokenize=_tokenize_settings(cfg) if one_pass else None,
                           inputs_identity=inputs_identity, tokenizer=tokenizer if one_pass else None)


def _check_work_dir(paths: Paths, settings: PrepareSettings) -> None:
    """Refuse a work directory made from other inputs, settings or task count (one line)."""
    plan = plan_path(paths.prepare)
    if plan.exists():
        made = read_plan(plan)
        if made.get("identity") == settings.inputs_identity and made.get("tasks") == settings.tasks:
            return
        what = (f"split into {made.get('tasks')} tasks (this command: {settings.tasks}; pass "
                f"--run.tasks={made.get('tasks')} to continue it)"
                if made.get("identity") == settings.inputs_identity else "made from other inputs or settings")
        raise ConfigError(f"{paths.work} was {what}; pass --overwrite to redo it, or choose another "
                          f"--output-prefix")
    # No plan yet: anything else there may be another array task that is still writing plan.json.


def _prepare_settings(cfg: PreprocessConfig, paths: Paths, one_pass: bool, array_count: int | None,
                      tokenizer: dict) -> PrepareSettings:
    """The prepare settings: from the inputs (stages that read them), else from the finished plan."""
    if cfg.run.stage in ("all", "prepare", "clean"):
        files = expand_inputs(cfg.input.paths)
        check_text_key(files, cfg.input.text_key)
        settings = _settings(cfg, files, _task_count(cfg, files, array_count), one_pass, tokenizer)
        settings.inputs_identity = _inputs_identity(files, settings, one_pass)
        _check_work_dir(paths, settings)
        return settings
    plan = plan_path(paths.prepare)
    if not plan.exists():
        raise ConfigError(f"{paths.prepare} has no prepare plan; run --stage prepare (or clean) first")
    made = read_plan(plan)
    files = made["files"]
    settings = _settings(cfg, files, made["tasks"], one_pass, tokenizer, made["identity"])
    changed = _changed_keys(made.get("settings", {}), settings_digest(settings))
    if changed:
        shown = "; ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        raise ConfigError(f"{paths.prepare} was prepared with other settings ({shown}); give every step the "
                          f"same settings, or run prepare again (--overwrite)")
    if made.get("one_pass") != one_pass:
        made_for = "to tokenize in one pass (no rewriting)" if made.get("one_pass") else "for rewriting"
        raise ConfigError(f"{paths.prepare} was prepared {made_for} and this command "
                          f"{'does not rewrite' if one_pass else 'rewrites'}: run prepare again with the same "
                          f"--rewrite setting (--overwrite)")
    return settings


def _changed_keys(made: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: earlier value -> this command's value`` for each dotted key that differs between two
    settings digests."""
    def shown(value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 70 else text[:67] + "..."

    out = []
    for key in sorted(set(made) | set(now)):
        a, b = made.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {shown(a)} -> {shown(b)}")
    return out


def _prepare_stage(cfg: PreprocessConfig, settings: PrepareSettings, paths: Paths,
                   share: tuple[int | None, int | None]) -> PrepareResult | None:
    """Run (or reuse) prepare or one of its steps; the finished stage, or None after a step alone."""
    stage, (task, count) = cfg.run.stage, share
    if stage in PREPARE_STEPS:
        if task is not None and stage == "clusters" and task != 0:
            raise ConfigError("the clusters step is one task: run it outside an array, or as --array=0")
        run_step(stage, settings, paths.prepare, task=task, num_tasks=count if stage == "merge" else None,
                 show_progress=cfg.run.progress)
        return None
    if task is not None:
        then = "tokenize" if settings.tokenize else "rewrite, tokenize"
        raise ConfigError(f"--stage {stage} runs every prepare step, which one task of {count or '?'} cannot do: "
                          f"in a job array, run --stage clean, merge, clusters, filter, then {then} "
                          f"(examples/slurm/preprocess_submit.sh)")
    return run_prepare(settings, paths.prepare, show_progress=cfg.run.progress)


class MiddleStage(Protocol):
    """A stage between prepare and tokenize (the alignment rewrite). It maps prepare's
    shards to new shards, writes one manifest per shard, and reports whether every
    shard is finished (with several ranks, each does only its share)."""

    name: str
    # The manifest statuses it adds, in the order the summary lists them (between kept and dropped).
    statuses: tuple[str, ...]

    def run(self, shards: list[str], work_dir: Path, show_progress: bool, do_work: bool = True) -> StageResult: ...

    def summary(self, stats: dict[str, Any]) -> list[str]:
        """Its lines of the end-of-run summary, from the run's stats (none when it did not run)."""
        ...


def _finish_manifest(paths: Paths, prepare: PrepareResult, middle_manifests: list[str],
                     token_manifests: list[str]) -> dict[str, Any]:
    """Write the final manifest; returns counts per status and per reason."""
    def chained(files):
        return itertools.chain.from_iterable(read_manifest(m) for m in files)

    with atomic_open(paths.manifest, "w") as f:
        writer = ManifestWriter(f)
        stages = ([chained(middle_manifests)] if middle_manifests else []) + [chained(token_manifests)]
        for row in merge_stage_rows(chained(prepare.manifests), stages):
            writer.write(row)
    return {"status": dict(sorted(writer.status.items())), "reasons": dict(sorted(writer.reasons.items()))}


def _tokenize(cfg: PreprocessConfig, prepare: PrepareResult, shards: list[str], paths: Paths,
              tok) -> tuple[dict, list[str]]:
    """The dataset: the prepare tasks' token partitions merged (one pass), or the shards tokenized."""
    if prepare.stats["one_pass"]:
        start = time.monotonic()
        parts = prepare.partitions
        publish_dataset(parts, paths.dataset, tok.dtype)
        seconds = prepare.stats["tokenize_seconds"]
        stats = {"tokenizer": tok.describe(), "documents": prepare.stats["documents_kept"],
                 "tokens": prepare.stats["tokens"], "partitions": len(parts), "partitions_reused": 0,
                 "seconds": round(time.monotonic() - start, 3), "max_token_id": prepare.stats["max_token_id"],
                 "tokens_per_worker_second": round(prepare.stats["tokens"] / seconds, 1) if seconds > 0 else None}
        return stats, [p + ".manifest.jsonl" for p in parts]
    stats = run_tokenize(shards, paths.tokenize, paths.dataset, _tokenize_settings(cfg),
                         show_progress=cfg.run.progress)
    return stats, partition_manifests(paths.tokenize, len(shards))


def run_preprocess(cfg: PreprocessConfig, middle: MiddleStage | None = None) -> dict[str, Any]:
    """Run the configured stages; returns the stats that are also written to ``{prefix}_stats.json``.

    ``middle`` (the alignment rewrite) runs between prepare and tokenize.
    """
    start = time.monotonic()
    stage = cfg.run.stage
    if stage == "rewrite" and middle is None:
        raise ConfigError("--stage rewrite needs a rewriting backend (--rewrite vllm|openai|hf)")
    tok = load_tokenizer(cfg.tokenize.tokenizer, cfg.tokenize.eod_token)
    paths = Paths.of(cfg.output.prefix)
    share = _share(cfg)
    if cfg.output.overwrite and share[0] is not None:
        raise ConfigError(f"--overwrite in a job array would let each task delete the others' work: remove "
                          f"{paths.work} once before submitting, and submit without it")
    if cfg.output.overwrite and stage in ("all", "prepare", "clean"):
        shutil.rmtree(paths.work, ignore_errors=True)
    settings = _prepare_settings(cfg, paths, one_pass=middle is None, array_count=share[1],
                                 tokenizer=tok.identity())
    check_writable_dir(Path(paths.prefix).parent)
    files = settings.files
    dump_yaml(cfg, paths.config)
    logger.info("tokenizer %s: vocab %d, EOD %d, token dtype %s; %d input file(s), %d prepare task(s)%s",
                tok.path, tok.vocab_size, tok.eod_id, tok.describe()["dtype"], len(files), settings.tasks,
                "" if share[0] is None else f", this is task {share[0]}")

    prepare = None
    if stage in ("all", "prepare", *PREPARE_STEPS):
        prepare = _prepare_stage(cfg, settings, paths, share)
        if prepare is None:
            return {"prepare_step": {"step": stage, "task": share[0], "tasks": settings.tasks}}
    if prepare is None:
        prepare = collect(settings, paths.prepare)
    prepare_stats = prepare.stats
    if stage == "prepare":
        if not prepare_stats["documents_kept"]:
            raise _nothing_kept(prepare_stats["documents_in"], prepare_stats["dropped_by_reason"],
                                str(paths.prepare))
        return {"prepare": prepare_stats}

    shards, middle_stats, middle_manifests = prepare.shards, None, []
    if middle is not None:
        # --stage tokenize only collects what the ranks of the middle stage finished.
        result = middle.run(shards, paths.work / middle.name, cfg.run.progress, do_work=stage != "tokenize")
        middle_stats = result.stats
        if stage == middle.name:
            return {middle.name: middle_stats}
        if not result.complete:
            raise ConfigError(f"{middle.name}: {middle_stats['shards_done']} of {middle_stats['shards_total']} "
                              f"shards are finished; run the remaining ranks (--stage {middle.name}) before "
                              f"--stage tokenize")
        shards, middle_manifests = result.shards, result.manifests

    # The dataset, manifest and stats are written by one process at a time: the same command started
    # twice would otherwise replace the files the other is reading back.
    with Lease(paths.work / "publish.lease"):
        tok_stats, token_manifests = _tokenize(cfg, prepare, shards, paths, tok)
        counts = _finish_manifest(paths, prepare, middle_manifests, token_manifests)
        elapsed = time.monotonic() - start
        stats = _run_stats(cfg, paths, files, prepare_stats, tok_stats, counts, elapsed)
        if middle_stats is not None:
            stats["timing"][middle.name] = middle_stats.pop("timing")
            stats[middle.name] = middle_stats
        atomic_write_json(paths.stats, stats)
    if sum(stats["documents_by_status"].values()) != stats["documents_in"]:
        raise RuntimeError("manifest does not account for every input document; this is a bug")
    if not stats["documents_written"]:
        raise _nothing_kept(stats["documents_in"], stats["dropped_by_reason"], paths.manifest)
    return stats


def _run_stats(cfg: PreprocessConfig, paths: Paths, files: list[str], prepare_stats: dict, tok_stats: dict,
               counts: dict, elapsed: float) -> dict[str, Any]:
    """The run's ``_stats.json``: counts, the tokenizer and dataset files, and (under ``timing``) the clock."""
    stage = cfg.run.stage
    input_bytes = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    whole = stage == "all"
    stats = {
        "inputs": files,
        "outputs": {"dataset": paths.dataset if tok_stats["documents"] else None, "manifest": paths.manifest,
                    "config": paths.config},
        "documents_in": prepare_stats["documents_in"],
        "documents_by_status": counts["status"],
        "dropped_by_reason": counts["reasons"],
        "cleaning_steps": prepare_stats["cleaning_steps"],
        # Pulled out of cleaning_steps: what the language identifier found, and the PII redacted per kind.
        "languages": _prefixed(prepare_stats["cleaning_steps"], "language:"),
        "pii_redacted": _prefixed(prepare_stats["cleaning_steps"], "pii:"),
        "empty_files": prepare_stats["empty_files"],
        "read_errors": prepare_stats["read_errors"],
        "dedup": prepare_stats["dedup"],
        "prepare_tasks": prepare_stats["tasks"],
        "one_pass": prepare_stats["one_pass"],
        "tokenizer": tok_stats["tokenizer"],
        "documents_written": tok_stats["documents"],
        "tokens_written": tok_stats["tokens"],
        # Checked by the trainer against the model's vocabulary (training/data.py: check_data).
        "max_token_id": tok_stats["max_token_id"],
        "partitions": tok_stats["partitions"],
        # What the trainer checks before it reads the dataset (training side): each file's size, and the
        # index's checksum.
        "dataset_files": dataset_files(paths.dataset) if tok_stats["documents"] else {},
        # Everything that depends on the clock lives under "timing": the rest is
        # identical between reruns of the same command.
        "timing": {
            "seconds_total": round(elapsed, 3),
            # The stage this command ran ("all": the whole path; the rates below are over it).
            "stage": stage,
            "seconds_prepare": prepare_stats["seconds"],
            "seconds_tokenize": tok_stats["seconds"],
            "partitions_reused": tok_stats["partitions_reused"],
            # Prepare tasks found finished (per step) and not redone; None: prepare ran earlier.
            "prepare_reused": prepare_stats.get("reused"),
            "workers": cfg.run.workers,
            # Rates over the inputs only when this command read them (--stage tokenize did not: None).
            "input_mb_per_second": round(input_bytes / 1e6 / elapsed, 3) if elapsed > 0 and whole else None,
            "documents_per_second": round(prepare_stats["documents_in"] / elapsed, 1)
            if elapsed > 0 and whole else None,
            "tokens_per_second": round(tok_stats["tokens"] / elapsed, 1) if elapsed > 0 else None,
            # One pass: tokenizing happened inside prepare; this counts the workers' tokenizer time.
            "tokens_per_worker_second": tok_stats["tokens_per_worker_second"],
        },
    }
    return stats


def dataset_files(prefix: str) -> dict[str, dict]:
    """``{basename: its dataset_identity}`` of the dataset written at ``prefix``."""
    return {os.path.basename(prefix): dataset_identity(prefix)}


def _prefixed(counts: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in counts.items() if k.startswith(prefix)}


def _nothing_kept(documents_in: int, reasons: dict[str, int], manifest: str) -> InputError:
    dropped = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
    return InputError(f"no document kept: {documents_in} in, dropped: {dropped}; no dataset written; "
                      f"{manifest} gives each document's reason")


def _rate(per_second: float | None) -> str:
    """A rate with the digits that matter: a small run's 0.4 docs/s is not '0 docs/s'."""
    x = per_second or 0.0
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def _time_line(t: dict[str, Any]) -> str:
    """The time of this command; a rate per document only when it read the documents (not a lone tokenize)."""
    if t.get("stage", "all") != "all":
        return (f"time:      {t['seconds_total']:.1f}s for --stage {t['stage']} alone, "
                f"{_rate(t['tokens_per_second'])} tokens/s")
    return (f"time:      {t['seconds_total']:.1f}s, {_rate(t['documents_per_second'])} docs/s, "
            f"{_rate(t['tokens_per_second'])} tokens/s")


def format_summary(stats: dict[str, Any], middle: MiddleStage | None = None) -> str:
    """The end-of-run summary a user reads: counts, reasons, tokens, throughput, where outputs went.

    ``middle``, the stage that ran between prepare and tokenize, orders its statuses and adds its lines.
    """
    t = stats["timing"]
    by = stats["documents_by_status"]
    order = [PASSED, *(middle.statuses if middle is not None else ()), DROPPED]
    statuses = sorted(by, key=lambda k: order.index(k) if k in order else len(order))
    lines = ["documents: " + ", ".join([f"{stats['documents_in']} in"]
                                       + [f"{by[k]} {k.replace('_', ' ')}" for k in statuses])]
    if stats["dropped_by_reason"]:
        lines.append("dropped:   " + ", ".join(f"{k} {v}" for k, v in stats["dropped_by_reason"].items()))
    if middle is not None:
        lines += middle.summary(stats)
    lines += [
        f"tokens:    {stats['tokens_written']:,} ({stats['tokenizer']['dtype']}, vocab "
        f"{stats['tokenizer']['vocab_size']:,}) in {stats['partitions']} partition(s)",
        _time_line(t),
        f"dataset:   {stats['outputs']['dataset']}.bin/.idx",
        f"manifest:  {stats['outputs']['manifest']}",
    ]
    return "\n".join(lines)
