"""How the prepare stage splits its input into tasks: a deterministic plan, written once.

Task ``t`` of ``T`` takes a contiguous slice of the input in input order, cut at
about ``t * total_bytes / T``. A cut that falls inside a plain JSONL file splits
the file at the next line start (its byte range and the number of its first
line are recorded, so line numbers stay the file's own); a cut inside a
compressed or Parquet file moves to the end of that file, since neither can be
entered in the middle. The plan depends only on the files and ``T``, never on
which machine computes it, so every SLURM array task can compute it alone.
"""

from __future__ import annotations

import os

from native_megatron.data.readers import COMPRESSED_SUFFIXES, InputPiece, input_format
from native_megatron.utils.config import ConfigError

# Files are read in blocks of this size to count the lines before a cut.
_BLOCK = 1 << 24


def splittable(path: str) -> bool:
    """Whether a task can start reading ``path`` in the middle (a plain JSONL file)."""
    return input_format(path) == "jsonl" and not path.lower().endswith(COMPRESSED_SUFFIXES)


def _next_line_start(f, offset: int) -> int:
    """The first line start at or after ``offset``."""
    if offset == 0:
        return 0
    f.seek(offset - 1)
    f.readline()
    return f.tell()


def _count_lines(f, start: int, end: int) -> int:
    f.seek(start)
    count, left = 0, end - start
    while left > 0:
        block = f.read(min(_BLOCK, left))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def _split_file(index: int, path: str, size: int, cuts: list[int]) -> list[InputPiece]:
    """``path`` cut at the line starts at or after ``cuts`` (offsets inside the file)."""
    with open(path, "rb") as f:
        starts = sorted({_next_line_start(f, c) for c in cuts} - {0})
        starts = [s for s in starts if s < size]
        pieces, line, prev = [], 0, 0
        for s in starts:
            line_at = line + _count_lines(f, prev, s)
            pieces.append((prev, s, line))
            prev, line = s, line_at
        pieces.append((prev, None, line))
    return [InputPiece(index, path, a, b, first) for a, b, first in pieces]


def plan_tasks(files: list[str], tasks: int) -> list[list[InputPiece]]:
    """The ``tasks`` slices of ``files``, in input order (a slice may be empty when inputs are few)."""
    if tasks < 1:
        raise ConfigError("run.tasks must be at least 1")
    sizes = [os.path.getsize(f) for f in files]
    total = sum(sizes)
    cuts = [t * total // tasks for t in range(1, tasks)]
    # Each cut is assigned to the file holding that byte; one that cannot be split there moves to its end.
    out: list[list[InputPiece]] = [[] for _ in range(tasks)]
    offset, cut_i = 0, 0
    for index, (path, size) in enumerate(zip(files, sizes)):
        inside = []
        while cut_i < len(cuts) and cuts[cut_i] < offset + size:
            inside.append(cuts[cut_i] - offset)
            cut_i += 1
        if inside and splittable(path):
            pieces = _split_file(index, path, size, inside)
        else:
            pieces = [InputPiece(index, path)]
        # Piece k of this file goes to the task its first byte falls in.
        for piece in pieces:
            at = offset + piece.start
            task = sum(1 for c in cuts if c <= at)
            out[task].append(piece)
        offset += size
    return out

