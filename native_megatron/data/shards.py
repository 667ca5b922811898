"""The document shard format between stages: JSONL, one ``{"id", "file", "line", "text"}`` per line.

Prepare writes shards, the rewrite reads and writes them, tokenize reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Iterator

from native_megatron.utils.io import atomic_open


class ShardWriter:
    """Kept documents into numbered JSONL shards of ``shard_size`` documents, each atomic."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self.directory, self.shard_size = directory, shard_size
        self.paths: list[str] = []
        self._cm = None
        self._f: IO[str] | None = None
        self._count = 0

    def write(self, row: dict) -> None:
        if self._f is None:
            path = self.directory / f"shard-{len(self.paths):05d}.jsonl"
            self.paths.append(str(path))
            self._cm = atomic_open(path, "w")
            self._f = self._cm.__enter__()
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._count += 1
        if self._count >= self.shard_size:
            self._close()

    def _close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
        self._cm, self._f, self._count = None, None, 0

    def close(self) -> None:
        self._close()


def read_shard_texts(path: str) -> Iterator[dict]:
    """The documents of one shard, in order."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
