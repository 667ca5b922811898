"""Stage 2: all tasks' sorted band (and exact-hash) files -> duplicate pairs, one unit per hash range.

A unit is one band and one slice of the 64-bit bucket-hash space (or one slice
of the exact-hash space, its prefix). It reads the slice of every task's file
(binary search in a memory map), a window of at most ``window_records`` at a
time, sorts it and walks the buckets: documents with equal band hashes (equal
exact hashes). Within a bucket, in key order, every member of this run is
paired with the first earlier member, or, with ``verify``, with the first of
the earlier members (at most ``max_candidates``) whose estimated Jaccard
similarity reaches ``threshold``, as the in-memory path checks a candidate.
With ``against``, the earlier run's kept documents join every bucket, ahead of
this run's; pairs among them alone are not written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from native_megatron.data.dedup import DedupConfig
from native_megatron.data.executor import Share, Unit, execute, run_one
from native_megatron.data.neardup.store import (
    THIS_RUN,
    Run,
    StagesConfig,
    band_path,
    check_task_file,
    load_npy,
    read_json,
    remove_stale_temporaries,
    save_npy,
    sketch_settings,
)
from native_megatron.data.work import Marker, identity
from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)

SPACE = 1 << 64
# Buckets up to this size are verified all at once (every earlier member, vectorised);
# bigger ones a member at a time against the first max_candidates.
SMALL_BUCKET = 32


@dataclass(frozen=True)
class Part:
    kind: str  # "band" or "exact"
    band: int
    index: int
    count: int

    @property
    def name(self) -> str:
        if self.kind == "band":
            return f"band-{self.band:03d}-r{self.index:03d}"
        return f"exact-{self.index:03d}"

    @property
    def hash_range(self) -> tuple[int, int]:
        return self.index * SPACE // self.count, (self.index + 1) * SPACE // self.count


def plan_parts(config: DedupConfig, stages: StagesConfig) -> list[Part]:
    """Every stage-2 unit; unit ``p`` belongs to stage-2 task ``p % num_tasks``."""
    sig = sketch_settings(config)
    parts = [Part("band", b, r, config.band_ranges) for b in range(sig["bands"]) for r in range(config.band_ranges)]
    if config.exact:
        parts += [Part("exact", 0, e, config.exact_ranges) for e in range(config.exact_ranges)]
    return parts


def pairs_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "pairs"


@dataclass
class Source:
    """One task's file for a unit: its records in the unit's range, and whose they are."""

    records: np.ndarray
    run: Run
    flag: np.uint64
    drop: np.ndarray | None  # sorted keys to leave out (the earlier run's own duplicates)


def _search(column: np.ndarray, value: int) -> int:
    return len(column) if value >= SPACE else int(np.searchsorted(column, np.uint64(value)))


def _sorted_isin(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[pos] == values


class Against:
    """An earlier, finished run: its signature files and the keys it dropped itself."""

    def __init__(self, path: str, config: DedupConfig) -> None:
        self.run = Run.open(path)
        if self.run.settings != sketch_settings(config):
            raise ConfigError(f"dedup against {path}: it was made with other settings ({self.run.settings}); "
                              f"use the same shingles, num_perm, seed, bands and rows")
        done = Path(path) / "clusters" / "DONE.json"
        if not done.exists():
            raise ConfigError(f"dedup against {path}: that run has no finished clusters stage (stage 3)")
        self.digest = read_json(done).get("identity")
        self.dropped = np.array(load_npy(Path(path) / "clusters" / "removed.npy")["k"])


def _part_identity(part: Part, config: DedupConfig, stages: StagesConfig, run: Run,
                    against: Against | None) -> str:
    return identity({"config": sketch_settings(config), "part": part.name, "verify": config.verify,
                   "threshold": config.threshold, "max_candidates": stages.max_candidates,
                   "tasks": [(t.index, t.docs, t.min_key, t.max_key) for t in run.tasks],
                   "against": against.digest if against else None})


def _sources(part: Part, run: Run, against: Against | None) -> list[Source]:
    def open_file(task) -> np.ndarray:
        path = band_path(task.path, part.band) if part.kind == "band" else task.path / "exact.npy"
        check_task_file(task, path)
        return load_npy(path)

    out = [Source(open_file(t), run, THIS_RUN, None) for t in run.tasks]
    if against is not None:
        out += [Source(open_file(t), against.run, np.uint64(0), against.dropped) for t in against.run.tasks]
    return out


def _windows(part: Part, sources: list[Source], window: int):
    """Yield (hash, low bits or None, global keys, is this run) of consecutive hash windows, sorted."""
    lo, hi = part.hash_range
    spans = [(_search(s.records["h"], lo), _search(s.records["h"], hi)) for s in sources]
    total = sum(e - b for b, e in spans)
    count = max(1, -(-total // window))
    edges = [lo + (hi - lo) * i // count for i in range(count + 1)]
    for wlo, whi in zip(edges, edges[1:]):
        chunks = []
        for s, (b, e) in zip(sources, spans):
            col = s.records["h"][b:e]
            recs = np.array(s.records[b + _search(col, wlo): b + _search(col, whi)])
            if s.drop is not None:
                recs = recs[~_sorted_isin(recs["k"], s.drop)]
            chunks.append((recs, s.flag))
        if sum(len(c) for c, _ in chunks) < 2:
            continue
        h = np.concatenate([c["h"] for c, _ in chunks])
        low = np.concatenate([c["l"] for c, _ in chunks]) if part.kind == "exact" else None
        keys = np.concatenate([c["k"] | f for c, f in chunks])
        order = np.lexsort((keys, low, h) if low is not None else (keys, h))
        yield h[order], (low[order] if low is not None else None), keys[order]


def _buckets(h: np.ndarray, low: np.ndarray | None, keys: np.ndarray):
    """(starts, sizes) of the buckets with two or more members, at least one of this run."""
    change = h[1:] != h[:-1]
    if low is not None:
        change |= low[1:] != low[:-1]
    starts = np.flatnonzero(np.concatenate([[True], change]))
    sizes = np.diff(np.append(starts, len(h)))
    new = (keys & THIS_RUN) != 0
    has_new = np.add.reduceat(new.astype(np.int64), starts) > 0
    keep = (sizes >= 2) & has_new
    return starts[keep], sizes[keep]


def _first_member_pairs(keys: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    first = np.repeat(starts, sizes)
    members = first + (np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    take = (members != first) & ((keys[members] & THIS_RUN) != 0)
    return np.stack([keys[first[take]], keys[members[take]]], axis=1)


class _Verifier:
    """Estimated Jaccard similarity between bucket members, from the stored signatures."""

    def __init__(self, run: Run, against: Against | None, config: DedupConfig, stages: StagesConfig) -> None:
        self.run, self.against, self.threshold = run, against, config.threshold
        self.num_perm, self.max_candidates = config.num_perm, stages.max_candidates

    def _signatures(self, keys: np.ndarray) -> np.ndarray:
        out = np.empty((len(keys), self.num_perm), dtype=np.uint32)
        mine = (keys & THIS_RUN) != 0
        if mine.any():
            out[mine] = self.run.signatures(keys[mine] & ~THIS_RUN)
        if (~mine).any():
            out[~mine] = self.against.run.signatures(keys[~mine])
        return out

    def _passes(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # The in-memory check: mean(sig_a == sig_b) >= threshold, the same float division.
        return (a == b).sum(axis=-1) / self.num_perm >= self.threshold

    def pairs(self, keys: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        if len(starts) == 0:
            return np.zeros((0, 2), dtype=np.uint64)
        members = np.repeat(starts, sizes) + (np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes))
        sigs = self._signatures(keys[members])
        row = np.empty(len(keys), dtype=np.int64)
        row[members] = np.arange(len(members))
        out = [self._small(keys, sigs, row, starts[sizes <= SMALL_BUCKET], sizes[sizes <= SMALL_BUCKET])]
        for s, n in zip(starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET]):
            out.append(self._large(keys[s:s + n], sigs[row[s:s + n]]))
        return np.concatenate(out)

    def _small(self, keys, sigs, row, starts, sizes) -> np.ndarray:
        found_i, found_j = [], []
        for n in np.unique(sizes):
            ti, tj = np.triu_indices(int(n), 1)
            cap = ti < self.max_candidates
            ti, tj = ti[cap], tj[cap]
            st = starts[sizes == n][:, None]
            i, j = (st + ti).ravel(), (st + tj).ravel()
            mine = (keys[j] & THIS_RUN) != 0
            i, j = i[mine], j[mine]
            for c in range(0, len(i), 1 << 16):
                ci, cj = i[c:c + (1 << 16)], j[c:c + (1 << 16)]
                ok = self._passes(sigs[row[ci]], sigs[row[cj]])
                found_i.append(ci[ok])
                found_j.append(cj[ok])
        if not found_i:
            return np.zeros((0, 2), dtype=np.uint64)
        i, j = np.concatenate(found_i), np.concatenate(found_j)
        order = np.lexsort((i, j))  # by member, then candidate: the first passing candidate wins
        i, j = i[order], j[order]
        first = np.concatenate([[True], j[1:] != j[:-1]]) if len(j) else np.zeros(0, dtype=bool)
        return np.stack([keys[i[first]], keys[j[first]]], axis=1)

    def _large(self, keys: np.ndarray, sigs: np.ndarray) -> np.ndarray:
        m = min(len(keys), self.max_candidates)
        out = []
        for c in range(1, len(keys), 1024):
            block = np.arange(c, min(c + 1024, len(keys)))
            ok = self._passes(sigs[None, :m, :], sigs[block, None, :])  # [block, candidate]
            ok &= np.arange(m)[None, :] < block[:, None]
            ok &= ((keys[block] & THIS_RUN) != 0)[:, None]
            hit = ok.any(axis=1)
            out.append(np.stack([keys[ok[hit].argmax(axis=1)], keys[block[hit]]], axis=1))
        return np.concatenate(out)


def merge_unit(part: Part, run_dir: str | Path, config: DedupConfig, stages: StagesConfig,
               run: Run | None = None, against: Against | None = None) -> Unit:
    """Stage 2's unit for ``part``: writes ``pairs/NAME.npy`` (uint64 [n, 2]: kept-side key, member key)."""
    run = run or Run.open(run_dir)
    if against is None and config.against:
        against = Against(config.against, config)
    out = pairs_dir(Path(run_dir))
    marker = Marker(out / f"{part.name}.done.json", {"identity": _part_identity(part, config, stages, run, against)})
    return Unit(part.name, marker, partial(_merge, part, Path(run_dir), config, stages),
                cleanup=partial(remove_stale_temporaries, out, f"{part.name}.*"), lease=out / f"{part.name}.lease")


def _merge(part: Part, run_dir: Path, config: DedupConfig, stages: StagesConfig) -> tuple[dict, list]:
    start = time.monotonic()
    run = Run.open(run_dir)
    against = Against(config.against, config) if config.against else None
    out = pairs_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    verifier = _Verifier(run, against, config, stages) if part.kind == "band" and config.verify else None
    found, records = [], 0
    for h, low, keys in _windows(part, _sources(part, run, against), stages.window_records):
        records += len(keys)
        starts, sizes = _buckets(h, low, keys)
        found.append(verifier.pairs(keys, starts, sizes) if verifier else _first_member_pairs(keys, starts, sizes))
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), dtype=np.uint64)
    save_npy(out / f"{part.name}.npy", pairs.astype(np.uint64))
    info = {"part": part.name, "records": records, "pairs": len(pairs), "seconds": round(time.monotonic() - start, 3)}
    return info, [out / f"{part.name}.npy"]


def merge_part(part: Part, run_dir: str | Path, config: DedupConfig, stages: StagesConfig,
               run: Run | None = None, against: Against | None = None) -> dict:
    """Stage 2 for one unit, here (see :func:`merge_unit`)."""
    done = run_one(merge_unit(part, run_dir, config, stages, run, against))
    return {**done.record, "reused": done.reused}


def merge_stage(run_dir: str | Path, config: DedupConfig, stages: StagesConfig) -> tuple[int, Callable[[int], Unit]]:
    """Stage 2's units: how many, and how to build unit ``i`` (for the executor)."""
    run = Run.open(run_dir)
    if run.settings != sketch_settings(config):
        raise ConfigError(f"{run_dir}: its signatures were made with other dedup settings ({run.settings})")
    against = Against(config.against, config) if config.against else None
    parts = plan_parts(config, stages)
    return len(parts), lambda i: merge_unit(parts[i], run_dir, config, stages, run, against)


def merge_buckets(task: int, num_tasks: int, run_dir: str | Path, config: DedupConfig,
                  stages: StagesConfig, workers: int = 1) -> list[dict]:
    """Stage 2 for task ``task`` of ``num_tasks``: the units ``p`` with ``p % num_tasks == task``."""
    count, unit = merge_stage(run_dir, config, stages)
    return [{**d.record, "reused": d.reused}
            for d in execute("dedup merge", count, unit, Share(task, num_tasks), workers)]
