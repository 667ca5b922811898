"""The split of the inputs into prepare tasks: every line once, in order, with the file's own line numbers."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from native_megatron.data.plan import plan_tasks
from native_megatron.data.readers import iter_pieces, iter_records
from native_megatron.data.tokenizer import token_dtype


def _write(path, n, width=40):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{path.name}-{i}", "text": "ن" * (width + i % 7)}) + "\n")
    return str(path)


def _lines(records):
    return [(r.file, r.line, r.payload) for r in records]


@pytest.mark.parametrize("tasks", [1, 2, 3, 7, 50])
def test_pieces_cover_every_line_once_in_input_order(tmp_path, tasks):
    files = [_write(tmp_path / "a.jsonl", 100), _write(tmp_path / "b.jsonl", 3), _write(tmp_path / "c.jsonl", 250)]
    plan = plan_tasks(files, tasks)
    assert len(plan) == tasks
    got = [rec for task in plan for rec in _lines(iter_pieces(task, "text", "id"))]
    assert got == _lines(iter_records(files, "text", "id"))
    # Big plain files are split, so the tasks are of similar size.
    sizes = [sum(1 for _ in iter_pieces(task, "text", "id")) for task in plan]
    if tasks <= 7:
        assert max(sizes) - min(sizes) <= 353 // tasks // 2 + 5


def test_compressed_files_are_never_split_and_a_long_line_is_not_cut(tmp_path):
    gz = tmp_path / "z.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        for i in range(200):
            f.write(json.dumps({"text": "ب" * 50}) + "\n")
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"text": "ت" * 100_000}) + "\n" + json.dumps({"text": "x"}) + "\n")
    plan = plan_tasks([str(gz), str(long_line)], 6)
    pieces = [p for task in plan for p in task]
    assert [p.whole for p in pieces if p.file_index == 0] == [True]
    # Every cut inside the 100 kB first line moves to the start of line 2.
    assert [(p.start > 0, p.first_line) for p in pieces if p.file_index == 1] == [(False, 0), (True, 1)]
    assert [r.line for task in plan for r in iter_pieces(task, "text", "id") if r.file == 1] == [1, 2]


def test_token_dtype_is_megatron_cores_choice():
    from megatron.core.datasets.indexed_dataset import DType

    for vocab in (1, 8000, 65_499, 65_500, 65_536, 128_256, 152_064):
        assert np.dtype(token_dtype(vocab)) == np.dtype(DType.optimal_dtype(vocab)), vocab
