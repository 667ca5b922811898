"""Stage 3: duplicate pairs -> groups, each kept by its first document; stage 4: what a task drops.

Stage 3 runs once. It reads only the pairs, so its memory grows with the number
of duplicates, not of documents: the documents in some pair, a union-find over
them (vectorised: hook roots to the smaller root, then compress paths, until
every pair agrees), and for each non-first member its group's first document
(the smallest key: the first copy in input order). A member is an
``exact_duplicate`` when it has the first document's normalised-text hash,
a ``near_duplicate`` otherwise, as the in-memory path names them.

Stage 4 is :class:`Decisions`: a task opens it for its own key range (memory:
its own dropped documents) and asks, document by document, what
:meth:`native_megatron.data.dedup.Deduplicator.check` would answer.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import numpy as np

from native_megatron.data.dedup import DedupConfig
from native_megatron.data.executor import Unit, run_one
from native_megatron.data.neardup.merge import Against, pairs_dir, plan_parts
from native_megatron.data.neardup.store import (
    REMOVED_DTYPE,
    THIS_RUN,
    Run,
    StagesConfig,
    Strings,
    load_npy,
    read_json,
    remove_stale_temporaries,
    save_npy,
    save_strings,
)
from native_megatron.data.work import Marker, identity
from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)

EXACT, NEAR = "exact_duplicate", "near_duplicate"


def clusters_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "clusters"


def components(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, root of each node): the keys in some pair, sorted, and the smallest key of each one's group."""
    nodes = np.unique(pairs)
    if len(nodes) == 0:
        return nodes, nodes
    a, b = np.searchsorted(nodes, pairs[:, 0]), np.searchsorted(nodes, pairs[:, 1])
    parent = np.arange(len(nodes))
    while True:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        low = np.minimum(pa[differ], pb[differ])
        np.minimum.at(parent, pa[differ], low)  # parent[x] <= x always: a root hooks under a smaller one
        np.minimum.at(parent, pb[differ], low)
        while True:
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand
    return nodes, nodes[parent]


def _read_pairs(run_dir: Path, names: list[str]) -> np.ndarray:
    arrays = [np.asarray(load_npy(pairs_dir(run_dir) / f"{n}.npy")) for n in names]
    return np.concatenate(arrays) if arrays else np.zeros((0, 2), dtype=np.uint64)


def clusters_unit(run_dir: str | Path, config: DedupConfig, stages: StagesConfig) -> Unit:
    """Stage 3's one unit: writes ``clusters/removed.npy`` and the kept documents' ids."""
    run_dir = Path(run_dir)
    part_digests = []
    for p in plan_parts(config, stages):
        marker = pairs_dir(run_dir) / f"{p.name}.done.json"
        if not marker.exists():
            raise ConfigError(f"{run_dir}: stage 2 unit {p.name} is unfinished; rerun stage 2 first")
        part_digests.append(read_json(marker).get("identity"))
    out = clusters_dir(run_dir)
    return Unit("clusters", Marker(out / "DONE.json", {"identity": identity(part_digests)}),
                partial(_clusters, run_dir, config, stages),
                cleanup=partial(remove_stale_temporaries, out), lease=out / "clusters.lease")


def build_clusters(run_dir: str | Path, config: DedupConfig, stages: StagesConfig) -> dict:
    """Stage 3, here: the counts (see :func:`clusters_unit`)."""
    done = run_one(clusters_unit(run_dir, config, stages))
    return {**done.record, "reused": done.reused}


def _clusters(run_dir: Path, config: DedupConfig, stages: StagesConfig) -> tuple[dict, list]:
    start = time.monotonic()
    out = clusters_dir(run_dir)
    parts = plan_parts(config, stages)
    near = _read_pairs(run_dir, [p.name for p in parts if p.kind == "band"])
    exact = np.unique(_read_pairs(run_dir, [p.name for p in parts if p.kind == "exact"]), axis=0)
    nodes, roots = components(np.concatenate([near, exact]))
    dropped = (nodes != roots) & ((nodes & THIS_RUN) != 0)
    keys, kept = nodes[dropped], roots[dropped]
    by_member = np.argsort(exact[:, 1], kind="stable")
    em, ek = exact[by_member, 1], exact[by_member, 0]
    pos = np.minimum(np.searchsorted(em, keys), max(len(em) - 1, 0))
    is_exact = (pos < len(em)) & (em[pos] == keys) & (ek[pos] == kept) if len(em) else np.zeros(len(keys), bool)
    removed = np.empty(len(keys), dtype=REMOVED_DTYPE)
    removed["k"], removed["root"], removed["exact"] = keys & ~THIS_RUN, kept, is_exact
    out.mkdir(parents=True, exist_ok=True)
    save_npy(out / "removed.npy", removed)
    root_keys = np.unique(kept)
    mine = (root_keys & THIS_RUN) != 0
    ids = np.empty(len(root_keys), dtype=object)
    ids[mine] = Run.open(run_dir).ids(root_keys[mine] & ~THIS_RUN) if mine.any() else []
    if (~mine).any():
        ids[~mine] = Against(config.against, config).run.ids(root_keys[~mine])
    save_npy(out / "roots.npy", root_keys)
    save_strings(out / "root_ids", [str(s) for s in ids])
    info = {"pairs": {"near": len(near), "exact": len(exact)},
            "documents_in_groups": int(len(nodes)), "groups": int(len(root_keys)),
            "dropped": int(len(keys)), "exact_duplicate": int(is_exact.sum()),
            "near_duplicate": int(len(keys) - is_exact.sum()),
            "against_matches": int(((kept & THIS_RUN) == 0).sum()),
            "against": config.against or None, "seconds": round(time.monotonic() - start, 3)}
    return info, [out / "removed.npy", out / "roots.npy", out / "root_ids.bin", out / "root_ids.npy"]


class Decisions:
    """Stage 4: what stage 3 decided for the documents with keys in ``[lo, hi]`` (all when unset)."""

    def __init__(self, run_dir: str | Path, key_range: tuple[int, int] | None = None) -> None:
        out = clusters_dir(run_dir)
        if not (out / "DONE.json").exists():
            raise ConfigError(f"{run_dir}: the clusters stage (stage 3) is unfinished; run it first")
        removed = load_npy(out / "removed.npy")
        if key_range is not None:
            lo, hi = np.searchsorted(removed["k"], np.uint64(key_range[0])), \
                np.searchsorted(removed["k"], np.uint64(key_range[1]), side="right")
            removed = removed[lo:hi]
        self.removed = np.array(removed)
        # A contiguous copy: searching a field of the structured array copies it on every call.
        self._keys = np.ascontiguousarray(self.removed["k"])
        self._roots = load_npy(out / "roots.npy")
        self._root_ids = Strings(out / "root_ids")

    def __len__(self) -> int:
        return len(self.removed)

    def check(self, key: int) -> tuple[str, str] | None:
        """``(reason, id of the kept original)`` for a dropped document, None for a kept one."""
        k = self._keys
        pos = int(np.searchsorted(k, np.uint64(key)))
        if pos == len(k) or int(k[pos]) != key:
            return None
        rec = self.removed[pos]
        root = int(np.searchsorted(self._roots, rec["root"]))
        return (EXACT if rec["exact"] else NEAR), self._root_ids.get([root])[0]
