"""Read a rewrite job's attempts and manifest into documents and summary figures, for the review page.

A job with a rewriter keeps every attempt in ``PREFIX_rewrites.jsonl`` (one row per document and
attempt: the source on attempt 1, the rewrite, each check's value and threshold, the decision) and
each document's fate in ``PREFIX_manifest.jsonl``. While the job runs, neither exists yet: the
finished shards' ``shard-NNNNN.rewrites.jsonl`` and ``.manifest.jsonl`` and the shards in flight
(temporary files, flushed row by row, the last line possibly cut) lie under ``PREFIX_work/``, and
are read instead. :mod:`native_megatron.alignment.review_page` draws the page from what is read here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from native_megatron.data.cleaning import ARABIC_LETTER_RE
from native_megatron.data.readers import InputError

PASSED = "passed"  # the filter name for documents whose final attempt passed every check

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
_WORD = re.compile(r"[\w\u0600-\u06FF]+")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")
_DIGIT = re.compile(r"[0-9\u0660-\u0669\u06F0-\u06F9]")


class ReviewError(InputError):
    """Nothing to review at a prefix, or a damaged file: one line for the user."""


@dataclass
class Document:
    """One document of the job: its attempts in order and, when the manifest has it, its final row."""
    id: str
    file: str
    line: int
    attempts: list[dict] = field(default_factory=list)
    manifest: dict | None = None

    @property
    def source(self) -> str:
        return next((a["source"] for a in self.attempts if a.get("source") is not None), "")

    @property
    def last(self) -> dict:
        return self.attempts[-1]

    @property
    def failed_checks(self) -> list[str]:
        """The checks the final attempt failed: empty when it was accepted."""
        return list(self.last.get("failed_checks") or [])

    @property
    def decision(self) -> str:
        return self.last.get("decision") or "unknown"

    @property
    def status(self) -> str:
        """The manifest's status (rewritten, kept_raw, dropped) or, before it is written, the decision."""
        return self.manifest["status"] if self.manifest else self.decision


@dataclass
class Review:
    prefix: str
    running: bool                   # read from PREFIX_work/ because the final files are not there yet
    sources: list[str]              # the files read, for the page's footer
    documents: list[Document]
    drop_reasons: Counter
    statuses: Counter
    without_attempts: int           # manifest rows of rewritten/kept_raw documents that have no attempt rows
    skipped_cut_lines: int = 0      # the cut last lines of files still being written


def _read_jsonl(path: Path, tolerate_cut_tail: bool) -> tuple[list[dict], int]:
    """Rows of a JSONL file. A line that is not JSON is damage, unless it is the last line of a file
    still being written (``tolerate_cut_tail``): then it is a row cut by the flush, and skipped."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    rows, cut = [], 0
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if tolerate_cut_tail and i == last:
                cut += 1
                continue
            raise ReviewError(f"{path}: line {i + 1} is not a JSON row: the file is damaged; rerun the rewrite "
                              f"stage to rewrite it") from None
    return rows, cut


def _work_files(work: Path, pattern: str) -> list[Path]:
    return sorted(p for p in work.rglob(pattern) if p.is_file()) if work.is_dir() else []


def _find_inputs(prefix: str) -> tuple[bool, list[Path], list[Path]]:
    """(running, rewrite files, manifest files): the final files if the job finished, else its work files."""
    final = Path(prefix + "_rewrites.jsonl")
    work = Path(prefix + "_work")
    if final.is_file():
        manifest = Path(prefix + "_manifest.jsonl")
        return False, [final], [manifest] if manifest.is_file() else []
    # Finished shards first: a shard that finishes while it is read has its rows in both files.
    rewrites = sorted(_work_files(work, "*shard-*.rewrites.jsonl*"),
                      key=lambda p: (not re.fullmatch(r"shard-\d+\.rewrites\.jsonl", p.name), str(p)))
    if not rewrites:
        raise ReviewError(f"no rewrite attempts at {prefix}: neither {final} nor {work}/**/shard-*.rewrites.jsonl "
                          f"exists; give the --output-prefix of a job run with a rewriter (--rewrite ...)")
    return True, rewrites, _work_files(work, "shard-[0-9]*.manifest.jsonl")


def load_review(prefix: str) -> Review:
    """Read the job at ``prefix`` (finished or running) into documents in input order."""
    running, rewrite_files, manifest_files = _find_inputs(prefix)
    docs: dict[str, Document] = {}
    seen: set[tuple[str, int]] = set()
    cut = 0
    for path in rewrite_files:
        rows, n_cut = _read_jsonl(path, tolerate_cut_tail=running)
        cut += n_cut
        for row in rows:
            key = (str(row["id"]), int(row.get("attempt", 1)))
            if key in seen:  # a shard finished while being read: its temporary and final file both hold it
                continue
            seen.add(key)
            doc = docs.setdefault(key[0], Document(key[0], row.get("file", ""), int(row.get("line", 0))))
            doc.attempts.append(row)
    for doc in docs.values():
        doc.attempts.sort(key=lambda a: int(a.get("attempt", 1)))
    reasons: Counter = Counter()
    statuses: Counter = Counter()
    without = 0
    for path in manifest_files:
        for row in _read_jsonl(path, tolerate_cut_tail=False)[0]:
            statuses[row["status"]] += 1
            if row["status"] == "dropped":
                reasons[row.get("reason", "unknown")] += 1
            doc = docs.get(str(row["id"]))
            if doc is not None:
                doc.manifest = row
            elif row["status"] in ("rewritten", "kept_raw") or row.get("failed_checks"):
                without += 1
    ordered = sorted(docs.values(), key=lambda d: (d.file, d.line)) if running else list(docs.values())
    return Review(prefix, running, [str(p) for p in rewrite_files + manifest_files], ordered, reasons, statuses,
                  without, cut)


def check_names(review: Review) -> list[str]:
    """Every check named in the attempts, in the order they first appear."""
    names: dict[str, None] = {}
    for doc in review.documents:
        for a in doc.attempts:
            names.update(dict.fromkeys(a.get("checks") or {}))
    return list(names)


def pass_rates(review: Review) -> dict[str, dict[int, tuple[int, int]]]:
    """check -> attempt number -> (passed, evaluated)."""
    out: dict[str, dict[int, list[int]]] = {}
    for doc in review.documents:
        for a in doc.attempts:
            for name, c in (a.get("checks") or {}).items():
                cell = out.setdefault(name, {}).setdefault(int(a.get("attempt", 1)), [0, 0])
                cell[0] += bool(c.get("passed"))
                cell[1] += 1
    return {name: {k: (v[0], v[1]) for k, v in sorted(by.items())} for name, by in out.items()}


def check_values(review: Review, name: str) -> tuple[list[float], object]:
    """All numeric values of one check over the attempts, and its threshold (as the rows give it)."""
    values, threshold = [], None
    for doc in review.documents:
        for a in doc.attempts:
            c = (a.get("checks") or {}).get(name)
            if c is None:
                continue
            threshold = c.get("threshold", threshold)
            v = c.get("value")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values.append(float(v))
    return values, threshold


def final_text(doc: Document) -> str:
    """What the review compares with the source: the final attempt's rewrite (accepted or not)."""
    return doc.last.get("text") or ""


def indicators(text: str) -> dict[str, float]:
    """Script shares (of the non-space characters) and dialect / MSA marker words per 1,000 words."""
    chars = sum(1 for ch in text if not ch.isspace()) or 1
    words = _WORD.findall(text)
    n = len(words) or 1
    counts = Counter(words)
    out = {"Arabic letters %": 100 * len(ARABIC_LETTER_RE.findall(text)) / chars,
           "Latin letters %": 100 * len(_LATIN.findall(text)) / chars,
           "digits %": 100 * len(_DIGIT.findall(text)) / chars}
    for dialect, markers in DIALECT_MARKERS.items():
        out[f"{dialect} markers /1k words"] = 1000 * sum(counts[w] for w in markers) / n
    out["MSA markers /1k words"] = 1000 * sum(counts[w] for w in MSA_MARKERS) / n
    return out


def before_after(review: Review) -> dict[str, tuple[float, float]]:
    """Each indicator over all sources and over all final rewrites (texts concatenated, so long
    documents weigh by their length, as they do in the dataset)."""
    docs = [d for d in review.documents if d.source and final_text(d)]
    before = indicators("\n".join(d.source for d in docs))
    after = indicators("\n".join(final_text(d) for d in docs))
    return {k: (before[k], after[k]) for k in before}
