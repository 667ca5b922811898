"""Exact and near-duplicate detection (MinHash LSH), reproducible with a seed: settings and fingerprints.

Fingerprints are computed per document in worker processes (:func:`fingerprint`).
The prepare stage decides on disk, in four steps (:mod:`native_megatron.data.neardup`),
so memory per task is bounded by its slice. ``tests/helpers/inmemory_dedup.py``
holds the one-process, in-memory way to the same decisions (``Deduplicator``), the
reference that ``benchmarks/bench_dedup.py`` and the tests measure the staged path against.

Exact duplicates are found on a normalised form (diacritics, tatweel, letter
variants, case, punctuation and spacing ignored). Near duplicates: MinHash over
word (or character) shingles, banded LSH to find candidates, and, with
``verify``, the candidate's estimated Jaccard similarity checked against
``threshold`` before a document is dropped.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from native_megatron.data import arabic
from native_megatron.utils.config import ConfigError

_NORM_TABLE = str.maketrans({**dict.fromkeys(arabic.ALEF_VARIANTS, arabic.ALEF), arabic.ALEF_MAKSURA: arabic.YAA,
                             arabic.TAA_MARBUTA: arabic.HAA, arabic.TATWEEL: None})
# The whole Quranic block, unlike cleaning's diacritics: the key has always ignored its three signs too,
# and changing that would change which documents are exact duplicates.
_MARKS_RE = re.compile(f"[{arabic.HARAKAT}{arabic.QURANIC_BLOCK}]")
_WORD_RE = re.compile(r"\w+")
# datasketch's 32-bit bijective permutations: uint32 signatures (half the memory of
# the legacy scheme) and no extra collisions from the permutation step.
MINHASH_SCHEME = "affine32"


@dataclass
class DedupConfig:
    """Which duplicates to drop and how near-duplicates are found."""

    exact: bool = True
    near: bool = True
    shingle_unit: Literal["word", "char"] = "word"
    shingle_size: int = 5
    num_perm: int = 128
    # Bands x rows per band (bands * rows <= num_perm). Leave both unset to let
    # datasketch pick the pair that minimises false positives and negatives at threshold.
    bands: int | None = None
    rows: int | None = None
    # Jaccard similarity of shingle sets. Web reposts of a 150-word article with a
    # changed figure and an added source line score about 0.75.
    threshold: float = 0.7
    verify: bool = True
    seed: int = 1
    # An earlier run to deduplicate against: its output prefix (or a dedup run directory).
    # Documents that match its kept documents are dropped, with duplicate_of naming them.
    against: str = ""
    # How the duplicate search (merge) is split: hash ranges per LSH band, and for the exact
    # hashes; each (band, range) is one unit of work. The answer never depends on them.
    band_ranges: int = 1
    exact_ranges: int = 1

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("dedup.threshold must be in (0, 1]")
        if self.shingle_size < 1 or self.num_perm < 2:
            raise ConfigError("dedup: shingle_size >= 1 and num_perm >= 2 required")
        if self.band_ranges < 1 or self.exact_ranges < 1:
            raise ConfigError("dedup.band_ranges and dedup.exact_ranges must be at least 1")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("dedup: set both dedup.bands and dedup.rows, or neither")
        if self.bands is not None and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"dedup: bands * rows ({self.bands} * {self.rows}) must be at most "
                              f"num_perm ({self.num_perm})")


def normalize_for_match(text: str) -> list[str]:
    """The words of ``text`` with spelling variants, marks and punctuation removed."""
    text = _MARKS_RE.sub("", text.translate(_NORM_TABLE)).casefold()
    return _WORD_RE.findall(text)


def shingles(words: list[str], config: DedupConfig) -> list[bytes]:
    n = config.shingle_size
    if config.shingle_unit == "char":
        joined = " ".join(words)
        grams = {joined[i:i + n] for i in range(max(1, len(joined) - n + 1))}
    else:
        grams = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}
    return sorted(g.encode("utf-8") for g in grams)


@dataclass
class Fingerprint:
    exact: bytes | None
    minhash: np.ndarray | None  # uint32[num_perm]


def fingerprint(text: str, config: DedupConfig) -> Fingerprint:
    """What the deduplicator needs about one document (computed in workers)."""
    words = normalize_for_match(text)
    exact = None
    if config.exact:
        exact = hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=16).digest()
    signature = None
    if config.near:
        from datasketch import MinHash

        m = MinHash(num_perm=config.num_perm, seed=config.seed, scheme=MINHASH_SCHEME,
                    permutations=_permutations(config.num_perm, config.seed))
        m.update_batch(shingles(words, config))
        signature = np.asarray(m.hashvalues, dtype=np.uint32)
    return Fingerprint(exact, signature)


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    # Drawing them is a third of a document's fingerprint time; they depend only on these two.
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme=MINHASH_SCHEME).permutations


def lsh_bands_rows(config: DedupConfig) -> tuple[int, int]:
    """The LSH (bands, rows): the configured pair, or the one datasketch picks for ``threshold``."""
    if config.bands is not None:
        return config.bands, config.rows
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    return lsh.b, lsh.r
