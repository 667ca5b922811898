"""Raw corpus -> clean -> dedup -> tokenize -> Megatron .bin/.idx, with a manifest.

The configuration (:class:`PreprocessConfig`) is checked, the inputs found, the
tokenizer loaded and the output directory proven writable before any work
starts; a text key that the inputs do not have is refused then too. Stages
write into ``{prefix}_work/`` and mark themselves done, so a rerun of the same
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from native_megatron.data.cleaning import CleanConfig
from native_megatron.data.dedup import DedupConfig
from native_megatron.data.indexed import TokenizeSettings, dataset_prefix, partition_manifests, run_tokenize
from native_megatron.data.manifest import DROPPED, PASSED, ManifestWriter, merge_stage_rows, read_manifest
from native_megatron.data.prepare import PrepareSettings, run_prepare
from native_megatron.data.readers import InputError, check_text_key, expand_inputs
from native_megatron.data.tasks import ShardTask, StageResult
from native_megatron.data.tokenizer import load_tokenizer
from native_megatron.utils.config import ConfigError, dump_yaml
from native_megatron.utils.io import atomic_open, atomic_write_json, check_writable_dir, read_json

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
    # Documents per work shard: the unit of parallel tokenization and of resumption.
    shard_size: int = 20_000
    overwrite: bool = False

    def validate(self) -> None:
        if not self.prefix:
            raise ConfigError("no output: pass --output-prefix PREFIX")
        if self.shard_size < 1:
            raise ConfigError("output.shard_size must be at least 1")


@dataclass
class RunConfig:
    # all, or one stage: prepare, rewrite (when rewriting is configured), tokenize.
    stage: Literal["all", "prepare", "rewrite", "tokenize"] = "all"
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    progress: bool = True

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError("run.workers must be at least 1")


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


def _input_fingerprint(files: list[str], cfg: PreprocessConfig) -> str:
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    settings = {"input": asdict(cfg.input), "clean": asdict(cfg.clean), "dedup": asdict(cfg.dedup),
                "shard_size": cfg.output.shard_size}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _prepare_stage(cfg: PreprocessConfig, files: list[str], paths: Paths) -> tuple[list[str], dict, bool]:
    """Run or reuse the prepare stage; returns (shards, stats, reused)."""
    task = _prepare_task(paths, _input_fingerprint(files, cfg))
    if task.read() is not None:
        done = task.load_done()
        if done is not None:
            logger.info("prepare: reusing finished work in %s", paths.prepare)
            return done["shards"], read_json(paths.prepare / "stats.json"), True
        raise ConfigError(f"{paths.work} was made from other inputs or settings; pass --overwrite "
                          f"to redo it, or choose another --output-prefix")
    # An unfinished prepare (killed mid-way) cannot be continued: dedup needs every
    # earlier document, so it starts over; tokenize partitions depend on it.
    shutil.rmtree(paths.work, ignore_errors=True)
    settings = PrepareSettings(files, cfg.input.text_key, cfg.input.id_key, cfg.clean, cfg.dedup,
                               cfg.output.shard_size, cfg.run.workers, url_key=cfg.input.url_key or None)
    result = run_prepare(settings, paths.prepare, show_progress=cfg.run.progress)
    task.mark_done({"shards": result.shards, "files": files})
    return result.shards, result.stats, False


def _prepare_task(paths: Paths, fingerprint: str | None = None) -> ShardTask:
    """The prepare stage as one task: its marker carries the inputs' fingerprint (None: any)."""
    return ShardTask(paths.prepare / "DONE.json", {} if fingerprint is None else {"fingerprint": fingerprint})


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


def _finish_manifest(paths: Paths, middle_manifests: list[str], parts: int) -> dict[str, Any]:
    """Write the final manifest; returns counts per status and per reason."""
    def chained(files):
        return itertools.chain.from_iterable(read_manifest(m) for m in files)

    with atomic_open(paths.manifest, "w") as f:
        writer = ManifestWriter(f)
        stages = ([chained(middle_manifests)] if middle_manifests else []) + \
            [chained(partition_manifests(paths.tokenize, parts))]
        for row in merge_stage_rows(read_manifest(paths.prepare / "manifest.jsonl"), stages):
            writer.write(row)
    return {"status": dict(sorted(writer.status.items())), "reasons": dict(sorted(writer.reasons.items()))}


def _finished_prepare(paths: Paths) -> tuple[list[str], dict, list[str]]:
    done = _prepare_task(paths).load_done()
    if done is None:
        raise ConfigError(f"{paths.prepare} has no finished prepare stage; run --stage prepare (or all) first")
    return done["shards"], read_json(paths.prepare / "stats.json"), done["files"]


def run_preprocess(cfg: PreprocessConfig, middle: MiddleStage | None = None) -> dict[str, Any]:
    """Run the configured stages; returns the stats that are also written to ``{prefix}_stats.json``.

    ``middle`` (the alignment rewrite) runs between prepare and tokenize.
    """
    start = time.monotonic()
    stage = cfg.run.stage
    if stage == "rewrite" and middle is None:
        raise ConfigError("--stage rewrite needs a rewriting backend (--rewrite vllm|openai|hf)")
    files = expand_inputs(cfg.input.paths) if stage in ("all", "prepare") else []
    check_text_key(files, cfg.input.text_key)
    tok = load_tokenizer(cfg.tokenize.tokenizer, cfg.tokenize.eod_token)
    paths = Paths.of(cfg.output.prefix)
    check_writable_dir(Path(paths.prefix).parent)
    if cfg.output.overwrite and stage in ("all", "prepare"):
        shutil.rmtree(paths.work, ignore_errors=True)
    dump_yaml(cfg, paths.config)
    logger.info("tokenizer %s: vocab %d, EOD %d, token dtype %s", tok.path, tok.vocab_size, tok.eod_id,
                tok.describe()["dtype"])

    if stage in ("all", "prepare"):
        shards, prepare_stats, reused = _prepare_stage(cfg, files, paths)
    else:
        shards, prepare_stats, files = _finished_prepare(paths)
        reused = True
    if stage == "prepare":
        if not prepare_stats["documents_kept"]:
            raise _nothing_kept(prepare_stats["documents_in"], prepare_stats["dropped_by_reason"],
                                str(paths.prepare / "manifest.jsonl"))
        return {"prepare": prepare_stats}
    if not reused:
        shutil.rmtree(paths.tokenize, ignore_errors=True)

    middle_stats, middle_manifests = None, []
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

    settings = TokenizeSettings(cfg.tokenize.tokenizer, cfg.tokenize.eod_token, cfg.tokenize.append_eod,
                                cfg.tokenize.add_bos, cfg.tokenize.batch_size, cfg.run.workers)
    tok_stats = run_tokenize(shards, paths.tokenize, paths.dataset, settings, show_progress=cfg.run.progress)
    counts = _finish_manifest(paths, middle_manifests, len(shards))
    elapsed = time.monotonic() - start
    input_bytes = sum(os.path.getsize(f) for f in files if os.path.exists(f))
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
        "tokenizer": tok_stats["tokenizer"],
        "documents_written": tok_stats["documents"],
        "tokens_written": tok_stats["tokens"],
        # Checked by the trainer against the model's vocabulary (training/data.py: check_data).
        "max_token_id": tok_stats["max_token_id"],
        "partitions": tok_stats["partitions"],
        # Everything that depends on the clock lives under "timing": the rest is
        # identical between reruns of the same command.
        "timing": {
            "seconds_total": round(elapsed, 3),
            "seconds_prepare": prepare_stats["seconds"],
            "seconds_tokenize": tok_stats["seconds"],
            "prepare_reused": reused,
            "partitions_reused": tok_stats["partitions_reused"],
            "workers": cfg.run.workers,
            "input_mb_per_second": round(input_bytes / 1e6 / elapsed, 3) if elapsed > 0 else None,
            "documents_per_second": round(prepare_stats["documents_in"] / elapsed, 1) if elapsed > 0 else None,
            "tokens_per_second": round(tok_stats["tokens"] / elapsed, 1) if elapsed > 0 else None,
            "tokens_per_worker_second": tok_stats["tokens_per_worker_second"],
        },
    }
    if middle_stats is not None:
        stats["timing"][middle.name] = middle_stats.pop("timing")
        stats[middle.name] = middle_stats
    atomic_write_json(paths.stats, stats)
    if sum(stats["documents_by_status"].values()) != stats["documents_in"]:
        raise RuntimeError("manifest does not account for every input document; this is a bug")
    if not stats["documents_written"]:
        raise _nothing_kept(stats["documents_in"], stats["dropped_by_reason"], paths.manifest)
    return stats


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
        f"time:      {t['seconds_total']:.1f}s, {_rate(t['documents_per_second'])} docs/s, "
        f"{_rate(t['tokens_per_second'])} tokens/s",
        f"dataset:   {stats['outputs']['dataset']}.bin/.idx",
        f"manifest:  {stats['outputs']['manifest']}",
    ]
    return "\n".join(lines)
