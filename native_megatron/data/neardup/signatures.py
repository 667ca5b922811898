"""Stage 1: one task's documents -> their signatures on disk, sorted per LSH band.

The signatures are those of the in-memory path (:func:`native_megatron.data.dedup.fingerprint`:
same normalisation, shingles, ``num_perm``, seed and bands x rows). Each band's
``rows`` values are folded into one 64-bit bucket hash (a false collision is a
2^-64 event per pair, and with ``verify`` it is checked away). Memory: the
task's own signatures, ``num_perm * 4 + 16 * (bands + 2)`` bytes per document.
"""

from __future__ import annotations

import array
import logging
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from native_megatron.data.dedup import DedupConfig, Fingerprint, fingerprint
from native_megatron.data.executor import Unit, run_one
from native_megatron.data.neardup.store import (
    BAND_DTYPE,
    EXACT_DTYPE,
    band_path,
    load_npy,
    make_key,
    remove_stale_temporaries,
    save_npy,
    save_npy_rows,
    save_strings,
    sketch_settings,
    task_dir,
)
from native_megatron.data.work import Marker, identity
from native_megatron.utils.config import ConfigError
from native_megatron.utils.parallel import batched, ordered_map

logger = logging.getLogger(__name__)

_BLOCK_ROWS = 65536


def _as_key(key) -> int:
    return make_key(*key) if isinstance(key, tuple) else int(key)


def _mix64(z: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a bijection on uint64 that spreads every input bit.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64[bands, n]: one bucket hash per band of each signature (datasketch's band layout)."""
    # One column at a time as uint64: a whole uint64 copy would cost num_perm * 8 bytes a document.
    out = np.empty((bands, len(signatures)), dtype=np.uint64)
    for b in range(bands):
        h = np.full(len(signatures), 0x9E3779B97F4A7C15 ^ b, dtype=np.uint64)
        for j in range(b * rows, (b + 1) * rows):
            h = _mix64(h ^ signatures[:, j].astype(np.uint64))
        out[b] = h
    return out


def _task_identity(config: DedupConfig, task: int, num_tasks: int) -> str:
    return identity({"config": sketch_settings(config), "task": task, "num_tasks": num_tasks})


def signatures_unit(task: int, num_tasks: int, run_dir: str | Path, config: DedupConfig,
                    items: Callable[[], Iterable[tuple]]) -> Unit:
    """Stage 1's unit for task ``task`` of ``num_tasks``: ``items()`` gives ``(key, doc_id, Fingerprint)``
    in input order, ``key`` a ``(file_index, line)`` pair or :func:`make_key` int (read only when the
    unit is not finished)."""
    if not 0 <= task < num_tasks:
        raise ConfigError(f"task {task} is outside 0..{num_tasks - 1}")
    tdir = task_dir(Path(run_dir), task)
    marker = Marker(tdir / "DONE.json", {"identity": _task_identity(config, task, num_tasks)})
    return Unit(f"task-{task:05d}", marker, partial(_write, task, num_tasks, items, tdir, config),
                cleanup=partial(_remove_partial, tdir), lease=tdir.parent / f"{tdir.name}.lease")


def write_fingerprints(task: int, num_tasks: int, items: Iterable[tuple], run_dir: str | Path,
                       config: DedupConfig) -> dict:
    """Stage 1 for task ``task`` of ``num_tasks``, here (see :func:`signatures_unit`).

    Returns the task's summary (also its ``DONE.json``); a finished task is not redone.
    """
    done = run_one(signatures_unit(task, num_tasks, run_dir, config, lambda: items))
    return {**done.record, "reused": done.reused}


def _remove_partial(tdir: Path) -> None:
    remove_stale_temporaries(tdir)
    # A marker left by an earlier attempt must not stand for the files written now.
    (tdir / "DONE.json").unlink(missing_ok=True)


def _write(task: int, num_tasks: int, items: Callable[[], Iterable[tuple]], tdir: Path,
           config: DedupConfig) -> tuple[dict, list]:
    start = time.monotonic()
    tdir.mkdir(parents=True, exist_ok=True)
    # Signatures go into fixed-size blocks as they arrive (not a list of arrays), so a task
    # holds about num_perm * 4 bytes a document, and twice that only while joining the blocks.
    keys, ids, blocks, exact = array.array("Q"), [], [], bytearray()
    block, filled = None, 0
    for key, doc_id, fp in items():
        keys.append(_as_key(key))
        ids.append(str(doc_id))
        if config.near:
            if block is None or filled == len(block):
                if block is not None:
                    blocks.append(block)
                block, filled = np.empty((_BLOCK_ROWS, len(fp.minhash)), dtype=np.uint32), 0
            block[filled] = fp.minhash
            filled += 1
        if config.exact:
            exact += fp.exact
    if block is not None:
        blocks.append(block[:filled])
    key_arr = np.frombuffer(keys, dtype=np.uint64) if keys else np.zeros(0, dtype=np.uint64)
    if len(key_arr) > 1 and not (key_arr[1:] > key_arr[:-1]).all():
        raise ConfigError(f"dedup task {task}: document keys must increase (input order, no repeats)")
    save_npy(tdir / "keys.npy", key_arr)
    save_strings(tdir / "ids", ids)
    sig = sketch_settings(config)
    if config.near:
        width = blocks[0].shape[1] if blocks else config.num_perm
        save_npy_rows(tdir / "sigs.npy", blocks, width, np.uint32)
        del blocks, block
        sig_arr = load_npy(tdir / "sigs.npy")   # memory-mapped: the bands are hashed from the page cache
        for b, h in enumerate(band_hashes(sig_arr, sig["bands"], sig["rows"])):
            rec = np.empty(len(h), dtype=BAND_DTYPE)
            rec["h"], rec["k"] = h, key_arr
            rec = rec[np.lexsort((rec["k"], rec["h"]))]
            save_npy(band_path(tdir, b), rec)
    if config.exact:
        halves = np.frombuffer(bytes(exact), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        rec = np.empty(len(key_arr), dtype=EXACT_DTYPE)
        rec["h"], rec["l"], rec["k"] = halves[:, 0], halves[:, 1], key_arr
        save_npy(tdir / "exact.npy", rec[np.lexsort((rec["k"], rec["l"], rec["h"]))])
    info = {"task": task, "num_tasks": num_tasks, "config": sig, "docs": len(keys),
            "min_key": int(key_arr[0]) if len(keys) else None, "max_key": int(key_arr[-1]) if len(keys) else None,
            "seconds": round(time.monotonic() - start, 3)}
    return info, sorted(p for p in tdir.iterdir() if p.suffix in (".npy", ".bin"))


_CONFIG: dict = {}


def _init(config: DedupConfig) -> None:
    _CONFIG["config"] = config


def _fingerprint_chunk(chunk: list[tuple]) -> list[tuple]:
    config = _CONFIG["config"]
    return [(key, doc_id, fingerprint(text, config)) for key, doc_id, text in chunk]


def fingerprints(docs: Iterable[tuple], config: DedupConfig, workers: int = 1,
                 chunk: int = 256) -> Iterator[tuple]:
    """``(key, doc_id, text)`` -> ``(key, doc_id, Fingerprint)``, in order, over ``workers`` processes."""
    for out in ordered_map(_fingerprint_chunk, batched(docs, chunk), workers, initializer=_init,
                           initargs=(config,)):
        yield from out


def write_signatures(task: int, num_tasks: int, docs: Iterable[tuple], run_dir: str | Path,
                     config: DedupConfig, workers: int = 1) -> dict:
    """Stage 1 from texts: ``docs`` are ``(key, doc_id, text)`` in input order (see :func:`write_fingerprints`);
    they are read only when the task is not finished."""
    return write_fingerprints(task, num_tasks, fingerprints(docs, config, workers), run_dir, config)


__all__ = ["Fingerprint", "band_hashes", "fingerprints", "signatures_unit", "write_fingerprints", "write_signatures"]
