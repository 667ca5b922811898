"""The on-disk layout of a staged dedup run, and reading it back.

A run directory holds, per stage:

- ``signatures/task-NNNNN/``: one stage-1 task: ``keys.npy`` (its document keys in
  input order), ``ids.npy`` + ``ids.bin`` (their ids), ``sigs.npy`` (uint32 MinHash
  signatures, one row per key), ``band-BBB.npy`` (band hash and key, sorted),
  ``exact.npy`` (128-bit normalised-text hash and key, sorted), ``DONE.json`` last;
- ``pairs/band-BBB-rRRR.npy``, ``pairs/exact-EEE.npy``: stage-2 duplicate pairs, each
  with its ``.done.json``;
- ``clusters/``: stage 3: ``removed.npy`` (key, kept key, exact flag), the kept
  documents' ids, ``DONE.json``.

A key is ``file_index << 32 | line``: comparing keys compares input positions.
Every file is written atomically and every unit is finished only when its done
marker exists, so a killed stage is rerun by redoing the units without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from native_megatron.data.dedup import MINHASH_SCHEME, DedupConfig, lsh_bands_rows
from native_megatron.data.work import WorkError, file_problem
from native_megatron.utils.config import ConfigError
from native_megatron.utils.io import atomic_open, read_json

# In stage-2 pairs and stage-3 roots, this run's keys carry this bit, an earlier run's
# (``against``) do not: the earlier run's documents come first in input order.
THIS_RUN = np.uint64(1 << 63)
MAX_LINE = (1 << 32) - 1
BAND_DTYPE = np.dtype([("h", "<u8"), ("k", "<u8")])
EXACT_DTYPE = np.dtype([("h", "<u8"), ("l", "<u8"), ("k", "<u8")])
REMOVED_DTYPE = np.dtype([("k", "<u8"), ("root", "<u8"), ("exact", "u1")])


def make_key(file_index: int, line: int) -> int:
    """The key of input line ``line`` of file ``file_index``: keys sort in input order."""
    if not 0 <= line <= MAX_LINE or not 0 <= file_index < (1 << 31):
        raise ConfigError(f"dedup key out of range: file {file_index}, line {line}")
    return (file_index << 32) | line


def split_key(key: int) -> tuple[int, int]:
    key = int(key) & ~(1 << 63)
    return key >> 32, key & MAX_LINE


@dataclass
class StagesConfig:
    """How stage 2 works through a unit (the answer never depends on these). How the work is split
    into units (``band_ranges``, ``exact_ranges``) and the run to dedup against (``against``) are
    :class:`~native_megatron.data.dedup.DedupConfig` settings, as in preprocessing."""

    # Stage 2 reads at most this many band records into memory at once (16 bytes each).
    window_records: int = 4_000_000
    # With verify: a document is compared with at most this many earlier members of
    # its LSH bucket (buckets of thousands of near-identical pages are common on the web).
    max_candidates: int = 100

    def validate(self) -> None:
        if self.window_records < 1 or self.max_candidates < 1:
            raise ConfigError("stages.window_records and stages.max_candidates must be at least 1")


def sketch_settings(config: DedupConfig) -> dict[str, Any]:
    """The settings the stage-1 files (MinHash signatures, exact hashes) depend on: two runs can be
    compared only when these agree."""
    bands, rows = lsh_bands_rows(config) if config.near else (0, 0)
    return {"exact": config.exact, "near": config.near, "shingle_unit": config.shingle_unit,
            "shingle_size": config.shingle_size, "num_perm": config.num_perm, "seed": config.seed,
            "bands": bands, "rows": rows, "scheme": MINHASH_SCHEME}


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def save_npy_rows(path: Path, blocks: list[np.ndarray], width: int, dtype) -> None:
    """Row blocks of one 2-D array written as one ``.npy`` (as :func:`save_npy` would), never joined in memory."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (sum(len(b) for b in blocks), width)}
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for block in blocks:
            f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def load_npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def save_strings(prefix: Path, strings: list[str]) -> None:
    """``strings`` as a blob and offsets (``PREFIX.bin``, ``PREFIX.npy``), for random access."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.uint64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    with atomic_open(prefix.with_suffix(".bin"), "wb") as f:
        f.write(b"".join(encoded))
    save_npy(prefix.with_suffix(".npy"), offsets)


class Strings:
    """Read back :func:`save_strings` output by position."""

    def __init__(self, prefix: Path) -> None:
        self.offsets = load_npy(prefix.with_suffix(".npy"))
        self.path = prefix.with_suffix(".bin")
        self._blob = None

    def get(self, rows: Iterable[int]) -> list[str]:
        if self._blob is None:
            # Memory-mapped once: a filter asks for one id per dropped document.
            size = self.path.stat().st_size
            self._blob = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        out = []
        for r in rows:
            start, end = int(self.offsets[r]), int(self.offsets[r + 1])
            out.append(self._blob[start:end].tobytes().decode("utf-8"))
        return out


def task_dir(run_dir: Path, task: int) -> Path:
    return Path(run_dir) / "signatures" / f"task-{task:05d}"


def band_path(tdir: Path, band: int) -> Path:
    return tdir / f"band-{band:03d}.npy"


@dataclass
class Task:
    index: int
    path: Path
    docs: int
    min_key: int
    max_key: int
    # Size and checksum of each file the task wrote (see native_megatron.data.work), by name.
    files: dict = field(default_factory=dict)


def check_task_file(task: Task, path: Path) -> None:
    """Stop with one line when a stage-1 file is not what its task wrote (cut or changed since)."""
    recorded = task.files.get(path.name)
    problem = file_problem(path, recorded) if recorded is not None else None
    if problem is not None:
        raise WorkError(f"{problem}: rerun stage 1 (prepare: --stage clean) for task {task.index}, then this step")


@dataclass
class Run:
    """A finished stage 1: its tasks in key order, and lookups of signatures and ids by key."""

    path: Path
    settings: dict   # sketch_settings() of the run
    tasks: list[Task]
    _sigs: dict = field(default_factory=dict, repr=False)
    _keys: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        run_dir = Path(run_dir)
        markers = sorted((run_dir / "signatures").glob("task-*/DONE.json"))
        if not markers:
            raise ConfigError(f"{run_dir} has no finished signature task (stage 1): run it first")
        dones = [read_json(m) for m in markers]
        expected = dones[0]["num_tasks"]
        found = {d["task"] for d in dones}
        missing = sorted(set(range(expected)) - found)
        if missing or any(d["num_tasks"] != expected for d in dones):
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise ConfigError(f"{run_dir}: stage 1 is unfinished (tasks {shown or '?'} of {expected} have no "
                              f"DONE.json, or tasks disagree on the task count): rerun those tasks")
        if any(d["config"] != dones[0]["config"] for d in dones):
            raise ConfigError(f"{run_dir}: signature tasks were made with different dedup settings; "
                              f"remove {run_dir / 'signatures'} and rerun stage 1")
        tasks = [Task(d["task"], m.parent, d["docs"], d["min_key"], d["max_key"], d.get("files", {}))
                 for d, m in zip(dones, markers) if d["docs"]]
        tasks.sort(key=lambda t: t.min_key)
        for a, b in zip(tasks, tasks[1:]):
            if b.min_key <= a.max_key:
                raise ConfigError(f"{run_dir}: tasks {a.index} and {b.index} hold overlapping input ranges; "
                                  f"give each task a contiguous slice of the input (in input order)")
        return cls(run_dir, dones[0]["config"], tasks)

    def keys(self, task: Task) -> np.ndarray:
        if task.index not in self._keys:
            self._keys[task.index] = load_npy(task.path / "keys.npy")
        return self._keys[task.index]

    def _locate(self, keys: np.ndarray) -> list[tuple[Task, np.ndarray, np.ndarray]]:
        """For each task holding some of ``keys``: (task, positions in ``keys``, rows in the task)."""
        mins = np.array([t.min_key for t in self.tasks], dtype=np.uint64)
        which = np.searchsorted(mins, keys, side="right") - 1
        out = []
        for ti in np.unique(which):
            task = self.tasks[int(ti)]
            pos = np.flatnonzero(which == ti)
            tkeys = self.keys(task)
            rows = np.searchsorted(tkeys, keys[pos])
            if ti < 0 or (rows >= len(tkeys)).any() or (tkeys[np.minimum(rows, len(tkeys) - 1)] != keys[pos]).any():
                raise ConfigError(f"{self.path}: a duplicate pair names a document no signature task holds; "
                                  f"the run directory was mixed from two runs")
            out.append((task, pos, rows))
        return out

    def signatures(self, keys: np.ndarray) -> np.ndarray:
        """The MinHash signatures of ``keys`` (this run's keys, without the run bit)."""
        out = np.empty((len(keys), self.settings["num_perm"]), dtype=np.uint32)
        for task, pos, rows in self._locate(keys):
            if task.index not in self._sigs:
                self._sigs[task.index] = load_npy(task.path / "sigs.npy")
            out[pos] = self._sigs[task.index][rows]
        return out

    def ids(self, keys: np.ndarray) -> list[str]:
        out: list[str] = [""] * len(keys)
        for task, pos, rows in self._locate(keys):
            for p, s in zip(pos, Strings(task.path / "ids").get(rows)):
                out[p] = s
        return out


def remove_stale_temporaries(directory: Path, name: str = "*") -> None:
    """Half-written files (atomic_open's ``.NAME.*.tmp``) a killed writer of ``name`` left."""
    for p in Path(directory).glob(f".{name}.*.tmp"):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
