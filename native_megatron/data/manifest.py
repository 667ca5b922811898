"""Per-document accounting: every input line ends in the manifest with a status.

A manifest is a JSONL file in input order, one row per input line:
``{"id", "file", "line", "status", "reason"?, "detail"?, "duplicate_of"?, "tokens"?}``.

Each stage writes the rows of the documents it received, in input order; the
final manifest is built by walking the first stage's rows and, for each document
that went on, taking the next row of the following stage. ``tokens`` counts the
ids written for the document, EOD included, so the column sums to the length of
the ``.bin`` file in tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Iterable, Iterator

PASSED = "kept"        # went on to the next stage (and, at the end, into the dataset)
DROPPED = "dropped"


class ManifestWriter:
    """Append manifest rows to a JSONL file, counting statuses and reasons as it goes."""

    def __init__(self, f: IO[str]) -> None:
        self.f = f
        self.status = Counter()
        self.reasons = Counter()

    def write(self, row: dict) -> None:
        self.status[row["status"]] += 1
        if row["status"] == DROPPED and row.get("reason"):
            self.reasons[row["reason"]] += 1
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_manifest(path: str | Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _key(row: dict) -> tuple:
    return row["id"], row["file"], row["line"]


class ManifestMismatch(RuntimeError):
    """Stage manifests disagree: a work directory was changed by hand or mixed from two runs."""


def merge_stage_rows(first: Iterable[dict], later: list[Iterable[dict]]) -> Iterator[dict]:
    """Join stage manifests into one row per input document (see the module docstring)."""
    streams = [iter(s) for s in later]
    for row in first:
        row = dict(row)
        for stream in streams:
            if row["status"] == DROPPED:
                break
            nxt = next(stream, None)
            if nxt is None or _key(nxt) != _key(row):
                raise ManifestMismatch(f"stage manifests disagree at {row['file']}:{row['line']} "
                                       f"(expected {row['id']!r}, found {None if nxt is None else nxt['id']!r})")
            row.update({k: v for k, v in nxt.items() if k not in ("id", "file", "line")})
        yield row
    for stream in streams:
        extra = next(stream, None)
        if extra is not None:
            raise ManifestMismatch(f"a stage manifest has a row for {extra['file']}:{extra['line']} "
                                   f"that the previous stage never passed on")
