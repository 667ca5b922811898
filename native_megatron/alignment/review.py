"""Read a rewrite job's attempts and manifest into summary figures and a sample, for the review page.

A job with a rewriter keeps every attempt in ``PREFIX_rewrites.jsonl`` (one row per document and
attempt, a document's attempts together: the source on attempt 1, the rewrite, each check's value
and threshold, the decision) and each document's fate in ``PREFIX_manifest.jsonl``. While the job
runs, neither exists yet: the finished shards' ``shard-NNNNN.rewrites.jsonl`` and ``.manifest.jsonl``
and the shards in flight (temporary files, flushed row by row, the last line possibly cut) lie under
``PREFIX_work/``, and are read instead.

The files of a real corpus hold every document twice over (source and rewrites), far more than
memory: they are read once, as a stream. Counts, check values and script/dialect indicators are
summed as they go; the documents shown are drawn by reservoir sampling, so only the sample is kept.
:mod:`native_megatron.alignment.review_page` draws the page.
"""

from __future__ import annotations

import json
import random
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from native_megatron.data.cleaning import ARABIC_LETTER_RE
from native_megatron.data.readers import InputError

PASSED = "passed"  # the filter (and sampling group) of documents whose final attempt passed every check
HISTOGRAMS = ("length_ratio", "knowledge")  # checks whose values the page draws as histograms
REWRITE_STATUSES = ("rewritten", "kept_raw")

# Words that mark a dialect, against common Modern Standard Arabic function words: a rewriter told
# to keep the author's voice should not turn the first into the second. Rates per 1,000 words.
DIALECT_MARKERS = {
    "Egyptian": ["مش", "ده", "دي", "دول", "عايز", "عاوز", "ازاي", "إزاي", "ليه", "كده", "بتاع", "دلوقتي", "اوي", "أوي"],
    "Levantine": ["هيك", "شو", "هلق", "هلأ", "بدي", "بدك", "منيح", "كتير", "هاد", "هادا", "ليش", "مو"],
    "Gulf": ["وايد", "شلون", "ابي", "أبي", "زين", "يبي", "هذي", "ذولا", "چذي", "شنو"],
    "Maghrebi": ["بزاف", "واش", "ديال", "كيفاش", "دابا", "علاش", "شحال", "مزيان"],
}
MSA_MARKERS = ["الذي", "التي", "الذين", "اللذان", "ليس", "ليست", "سوف", "لكن", "لكنّ", "إن", "إنّ", "أن", "لم",
               "لن", "هذا", "هذه", "ذلك", "تلك", "حيث", "إذ", "كيف", "ماذا", "لماذا"]
_MARKER_GROUP = {w: g for g, words in [*DIALECT_MARKERS.items(), ("MSA", MSA_MARKERS)] for w in words}
_WORD = re.compile(r"[\w\u0600-\u06FF]+")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")
_DIGIT = re.compile(r"[0-9\u0660-\u0669\u06F0-\u06F9]")
_SHARD = re.compile(r"shard-(\d+)\.rewrites\.jsonl")  # the whole name of a finished shard's file


class ReviewError(InputError):
    """Nothing to review at a prefix, or a damaged file: one line for the user."""


@dataclass
class Document:
    """One document of the job: its attempts in order and, when the manifest has it, its final row."""
    id: str
    file: str
    line: int
    attempts: list[dict]
    order: int = 0                  # position in the stream: the page lists its sample in input order
    manifest: dict | None = None

    @property
    def source(self) -> str:
        return next((a["source"] for a in self.attempts if a.get("source") is not None), "")

    @property
    def rewrite(self) -> str:
        """The final attempt's rewrite (accepted or not): what the review compares with the source."""
        return self.attempts[-1].get("text") or ""

    @property
    def failed_checks(self) -> list[str]:
        """The checks the final attempt failed: empty when it was accepted."""
        return list(self.attempts[-1].get("failed_checks") or [])

    @property
    def failed_any(self) -> list[str]:
        """Checks failed by any attempt: "rejected by X" shows a document its retry rescued too."""
        return list(dict.fromkeys(n for a in self.attempts for n in a.get("failed_checks") or []))

    @property
    def status(self) -> str:
        """The manifest's status (rewritten, kept_raw, dropped) or, before it is written, the last decision."""
        return self.manifest["status"] if self.manifest else self.attempts[-1].get("decision") or "unknown"


@dataclass
class Review:
    prefix: str
    running: bool                   # read from PREFIX_work/ because the final files are not there yet
    sources: list[str]              # the files read, for the page's footer
    sample: list[Document]          # the documents shown, in input order
    documents: int = 0
    attempts: int = 0
    first_pass: int = 0             # accepted on the first attempt
    retry_pass: int = 0             # accepted on a later one
    # check -> attempt number -> [passed, evaluated]
    pass_counts: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    values: dict[str, array] = field(default_factory=dict)          # check -> every numeric value (HISTOGRAMS)
    thresholds: dict[str, object] = field(default_factory=dict)
    script: dict[str, Counter] = field(default_factory=lambda: {"source": Counter(), "rewrite": Counter()})
    decisions: Counter = field(default_factory=Counter)             # the final attempts' decisions
    statuses: Counter = field(default_factory=Counter)              # of the manifest
    drop_reasons: Counter = field(default_factory=Counter)
    rewrite_rows: int = 0           # manifest rows the rewrite stage wrote (rewritten, kept_raw, failed checks)
    skipped_cut_lines: int = 0      # the cut last lines of files still being written

    def check_names(self) -> list[str]:
        return list(self.pass_counts)

    def before_after(self) -> dict[str, tuple[float, float]]:
        """Each indicator over all sources and over all final rewrites (counts summed over the documents,
        so long documents weigh by their length, as they do in the dataset)."""
        before, after = (_rates(self.script[side]) for side in ("source", "rewrite"))
        return {k: (before[k], after[k]) for k in before}


def _read_jsonl(path: Path, tolerate_cut_tail: bool, cut: list[int],
                progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Rows of a JSONL file, streamed. A line that is not JSON is damage, unless it is a cut last line
    (no newline) of a file still being written (``tolerate_cut_tail``): skipped, and counted in ``cut``.
    ``progress`` is told the bytes of each line read."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if progress is not None:
                progress(len(line))
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                if tolerate_cut_tail and not line.endswith(b"\n"):
                    cut[0] += 1
                    continue
                raise ReviewError(f"{path}: line {number} is not a JSON row: the file is damaged; rerun the "
                                  f"rewrite stage to rewrite it") from None


def _work_files(work: Path, pattern: str) -> list[Path]:
    return sorted(p for p in work.rglob(pattern) if p.is_file()) if work.is_dir() else []


def _find_inputs(prefix: str) -> tuple[bool, list[Path], list[Path]]:
    """(running, rewrite files, manifest files): the final files if the job finished, else its work files."""
    final = Path(prefix + "_rewrites.jsonl")
    work = Path(prefix + "_work")
    if final.is_file():
        manifest = Path(prefix + "_manifest.jsonl")
        return False, [final], [manifest] if manifest.is_file() else []
    found = _work_files(work, "*shard-*.rewrites.jsonl*")
    if not found:
        raise ReviewError(f"no rewrite attempts at {prefix}: neither {final} nor {work}/**/shard-*.rewrites.jsonl "
                          f"exists; give the --output-prefix of a job run with a rewriter (--rewrite ...)")
    # A shard that finished while the job was listed has its rows in its final file and maybe still in
    # its temporary one: read the final file only.
    finished = {p.parent / p.name for p in found if _SHARD.fullmatch(p.name)}
    rewrites = [p for p in found if _SHARD.fullmatch(p.name) or not (m := _SHARD.search(p.name))
                or p.parent / m.group(0) not in finished]
    # In shard order (the input's), a shard's final file before its temporary ones.
    rewrites.sort(key=lambda p: (int(m.group(1)) if (m := _SHARD.search(p.name)) else -1,
                                 not _SHARD.fullmatch(p.name), str(p)))
    return True, rewrites, _work_files(work, "shard-[0-9]*.manifest.jsonl")


def _documents(files: list[Path], running: bool, cut: list[int],
               progress: Callable[[int], None] | None) -> Iterator[list[dict]]:
    """Each document's attempt rows (a document's attempts lie together in one file)."""
    group: list[dict] = []
    for path in files:
        for row in _read_jsonl(path, running, cut, progress):
            if group and str(row["id"]) != str(group[0]["id"]):
                yield group
                group = []
            group.append(row)
        if group:
            yield group
            group = []


class _Reservoirs:
    """Uniform samples of a stream (Algorithm R): ``size`` documents of all, and one of each group
    (passed, rejected by each check), so every filter of the page has a document to show."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng = size, random.Random(seed)
        self.all: list[Document] = []
        self.seen = 0
        self.groups: dict[str, tuple[int, Document]] = {}   # group -> (documents seen in it, the one kept)

    def offer(self, doc: Document) -> None:
        self.seen += 1
        if len(self.all) < self.size:
            self.all.append(doc)
        else:
            k = self.rng.randrange(self.seen)
            if k < self.size:
                self.all[k] = doc
        for group in ([PASSED] if not doc.failed_checks else []) + doc.failed_any:
            n, kept = self.groups.get(group, (0, doc))
            self.groups[group] = (n + 1, doc if self.rng.randrange(n + 1) == 0 else kept)

    def sample(self) -> list[Document]:
        chosen = {d.order: d for _, d in self.groups.values()}
        for d in self.all:
            if len(chosen) >= self.size:
                break
            chosen.setdefault(d.order, d)
        return [chosen[k] for k in sorted(chosen)]


def _count_script(counts: Counter, text: str) -> None:
    counts["chars"] += len("".join(text.split()))  # the non-space characters, counted in C
    counts["Arabic letters"] += len(ARABIC_LETTER_RE.findall(text))
    counts["Latin letters"] += len(_LATIN.findall(text))
    counts["digits"] += len(_DIGIT.findall(text))
    words = _WORD.findall(text)
    counts["words"] += len(words)
    counts.update(_MARKER_GROUP[w] for w in words if w in _MARKER_GROUP)


def _rates(counts: Counter) -> dict[str, float]:
    chars, words = counts["chars"] or 1, counts["words"] or 1
    out = {f"{k} %": 100 * counts[k] / chars for k in ("Arabic letters", "Latin letters", "digits")}
    for group in [*DIALECT_MARKERS, "MSA"]:
        out[f"{group} markers /1k words"] = 1000 * counts[group] / words
    return out


def indicators(text: str) -> dict[str, float]:
    """Script shares (of the non-space characters) and dialect / MSA marker words per 1,000 words."""
    counts: Counter = Counter()
    _count_script(counts, text)
    return _rates(counts)


def _add(review: Review, doc: Document) -> None:
    review.documents += 1
    review.attempts += len(doc.attempts)
    review.decisions[doc.status] += 1
    if not doc.failed_checks:
        review.first_pass += len(doc.attempts) == 1
        review.retry_pass += len(doc.attempts) > 1
    for a in doc.attempts:
        for name, c in (a.get("checks") or {}).items():
            cell = review.pass_counts.setdefault(name, {}).setdefault(int(a.get("attempt", 1)), [0, 0])
            cell[0] += bool(c.get("passed"))
            cell[1] += 1
            v = c.get("value")
            if name in HISTOGRAMS and isinstance(v, (int, float)) and not isinstance(v, bool):
                review.values.setdefault(name, array("d")).append(float(v))
                review.thresholds[name] = c.get("threshold")
    if doc.source and doc.rewrite:
        _count_script(review.script["source"], doc.source)
        _count_script(review.script["rewrite"], doc.rewrite)


def input_bytes(prefix: str) -> int:
    """Bytes :func:`load_review` will read for ``prefix``: a progress bar's total."""
    _, rewrites, manifests = _find_inputs(prefix)
    return sum(p.stat().st_size for p in rewrites + manifests)


def load_review(prefix: str, sample_size: int = 200, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> Review:
    """Read the job at ``prefix`` (finished or running) in one pass: its figures, and ``sample_size``
    documents drawn at random (``seed``), at least one for each filter where there is one.
    ``progress`` is told the bytes read as they are."""
    running, rewrite_files, manifest_files = _find_inputs(prefix)
    review = Review(prefix, running, [str(p) for p in rewrite_files + manifest_files], [])
    reservoirs = _Reservoirs(sample_size, seed)
    cut = [0]
    seen: set[tuple[str, int]] = set()
    for rows in _documents(rewrite_files, running, cut, progress):
        if running:  # only a running job's files can overlap; a finished file is one pass over the input
            rows = [r for r in rows if (str(r["id"]), int(r.get("attempt", 1))) not in seen]
            seen.update((str(r["id"]), int(r.get("attempt", 1))) for r in rows)
            if not rows:
                continue
        rows.sort(key=lambda a: int(a.get("attempt", 1)))
        doc = Document(str(rows[0]["id"]), rows[0].get("file", ""), int(rows[0].get("line", 0)), rows,
                       order=review.documents)
        _add(review, doc)
        reservoirs.offer(doc)
    review.skipped_cut_lines = cut[0]
    review.sample = reservoirs.sample()
    shown = {d.id: d for d in review.sample}
    for path in manifest_files:
        for row in _read_jsonl(path, False, cut, progress):
            review.statuses[row["status"]] += 1
            if row["status"] == "dropped":
                review.drop_reasons[row.get("reason", "unknown")] += 1
            review.rewrite_rows += row["status"] in REWRITE_STATUSES or bool(row.get("failed_checks"))
            if str(row["id"]) in shown:
                shown[str(row["id"])].manifest = row
    return review
