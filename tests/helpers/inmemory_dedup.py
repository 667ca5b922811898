"""The one-process, in-memory deduplicator: the reference the staged dedup (``neardup``) is measured against.

A document is compared with the documents kept before it, in arrival order, with the same
fingerprints (:func:`native_megatron.data.dedup.fingerprint`) and LSH bands; only the tests and
``benchmarks/bench_dedup.py`` use it, so it lives here rather than in the package.
"""

from __future__ import annotations

import numpy as np

from native_megatron.data.dedup import MINHASH_SCHEME, DedupConfig, Fingerprint


class Deduplicator:
    """Keeps the first of each group of duplicates, deciding in the order documents arrive."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        self._exact: dict[bytes, str] = {}
        self._lsh = None
        self._signatures: dict[int, np.ndarray] = {}
        self._ids: list[str] = []
        if config.near:
            from datasketch import MinHashLSH

            params = (config.bands, config.rows) if config.bands is not None else None
            self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=params)

    @property
    def bands_rows(self) -> tuple[int, int] | None:
        return (self._lsh.b, self._lsh.r) if self._lsh is not None else None

    def check(self, doc_id: str, fp: Fingerprint) -> tuple[str, str] | None:
        """``(reason, id of the kept original)`` for a duplicate; None (and remember it) otherwise."""
        if fp.exact is not None:
            original = self._exact.get(fp.exact)
            if original is not None:
                return "exact_duplicate", original
        if self._lsh is not None and fp.minhash is not None:
            match = self._near_match(fp.minhash)
            if match is not None:
                return "near_duplicate", match
        self._remember(doc_id, fp)
        return None

    def _lean(self, signature: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.config.seed, hashvalues=signature, scheme=MINHASH_SCHEME)

    def _near_match(self, signature: np.ndarray) -> str | None:
        candidates = sorted(self._lsh.query(self._lean(signature)))
        for key in candidates:  # sorted: the earliest kept document wins, every run
            if not self.config.verify:
                return self._ids[key]
            similarity = float(np.mean(self._signatures[key] == signature))
            if similarity >= self.config.threshold:
                return self._ids[key]
        return None

    def _remember(self, doc_id: str, fp: Fingerprint) -> None:
        key = len(self._ids)
        self._ids.append(doc_id)
        if fp.exact is not None:
            self._exact[fp.exact] = doc_id
        if self._lsh is not None and fp.minhash is not None:
            self._lsh.insert(key, self._lean(fp.minhash), check_duplication=False)
            if self.config.verify:
                self._signatures[key] = fp.minhash
