"""A generated Arabic-script corpus with planted duplicate groups of known Jaccard similarity.

Each group is an original, variants that keep its first ``m`` words and replace
the rest (word 5-gram Jaccard from 0.5 to 1.0; the exact value is measured on
the same shingles dedup uses), and exact copies that differ only in what
normalisation removes (diacritics, tatweel, punctuation). Documents are shuffled,
so a group's members land in different files and tasks, in any order.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from native_megatron.data.dedup import DedupConfig, normalize_for_match, shingles

LETTERS = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"


@dataclass
class Planted:
    texts: list[str]
    ids: list[str]
    groups: list[list[int]] = field(default_factory=list)  # positions, any order
    jaccard: dict[tuple[int, int], float] = field(default_factory=dict)  # (a, b), a < b, same group


def _words(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    return [vocab[rng.randrange(len(vocab))] for _ in range(n)]


def _shingle_set(text: str, config: DedupConfig) -> set[bytes]:
    return set(shingles(normalize_for_match(text), config))


def generate(docs: int, seed: int = 0, group_fraction: float = 0.3, words: tuple[int, int] = (60, 90),
             config: DedupConfig | None = None) -> Planted:
    """About ``docs`` documents; ``group_fraction`` of them are members of duplicate groups."""
    config = config or DedupConfig()
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7))) for _ in range(60_000)})
    items: list[tuple[str, int | None]] = []  # (text, group index)
    groups = 0
    while len(items) < docs:
        n = rng.randint(*words)
        base = _words(rng, vocab, n)
        if rng.random() >= group_fraction / 3.5:  # a group has 3.5 members on average
            items.append((" ".join(base), None))
            continue
        members = [" ".join(base)]
        for _ in range(rng.randint(1, 3)):
            target = rng.uniform(0.5, 1.0)
            keep = min(n, 4 + round(2 * target * (n - 4) / (1 + target)))
            members.append(" ".join(base[:keep] + _words(rng, vocab, n - keep)))
        for _ in range(rng.randint(0, 2)):
            members.append(" ".join(base).replace(base[1], base[1] + "\u064e\u0640", 1) + " .")
        items.extend((m, groups) for m in members)
        groups += 1
    rng.shuffle(items)
    planted = Planted([t for t, _ in items], [f"doc-{i:07d}" for i in range(len(items))])
    by_group: dict[int, list[int]] = {}
    for pos, (_, g) in enumerate(items):
        if g is not None:
            by_group.setdefault(g, []).append(pos)
    planted.groups = list(by_group.values())
    for members in planted.groups:
        sets = {p: _shingle_set(planted.texts[p], config) for p in members}
        for i, a in enumerate(sorted(members)):
            for b in sorted(members)[i + 1:]:
                planted.jaccard[(a, b)] = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
    return planted


def truly_dropped(planted: Planted, threshold: float) -> set[int]:
    """Positions that are not first (in input order) of their group of pairs at Jaccard >= threshold."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for (a, b), j in planted.jaccard.items():
        if j >= threshold:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {x for x in parent if find(x) != x}


def write_jsonl(planted: Planted, directory: Path, files: int) -> list[str]:
    """The corpus as ``files`` JSONL files of consecutive documents; returns their paths in order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    n = len(planted.texts)
    for f in range(files):
        path = directory / f"part-{f:04d}.jsonl"
        with open(path, "w", encoding="utf-8") as out:
            for i in range(f * n // files, (f + 1) * n // files):
                out.write(json.dumps({"id": planted.ids[i], "text": planted.texts[i]}, ensure_ascii=False) + "\n")
        paths.append(str(path))
    return paths
