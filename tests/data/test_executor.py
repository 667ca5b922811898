"""The one executor: which units are this process's, each run once over a real pool, typed results."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest

from native_megatron.data.dedup import DedupConfig
from native_megatron.data.executor import Share, Unit, execute
from native_megatron.data.neardup.run import DedupRunConfig, InputSpec, run_local, run_task
from native_megatron.data.neardup.store import StagesConfig
from native_megatron.data.work import Marker
from native_megatron.utils.config import ConfigError
from tests.helpers.planted_corpus import generate, write_jsonl


def _write(path: Path) -> tuple[dict, list]:
    path.write_text(f"written by {os.getpid()}\n")
    return {"pid": os.getpid()}, [path]


def _unit(root: Path, i: int) -> Unit:
    return Unit(f"u{i}", Marker(root / f"u{i}.done.json", {"identity": f"unit {i}"}), partial(_write, root / f"u{i}"))


def test_shares_split_the_units_and_a_pool_runs_each_once_in_order(tmp_path, monkeypatch):
    assert list(Share(1, 3).mine(7)) == [1, 4] and list(Share().mine(3)) == [0, 1, 2]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "13")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert Share.of() == Share(2, 4) and Share.of(0, 2) == Share(0, 2)
    with pytest.raises(ConfigError, match="outside 0..1"):
        Share(2, 2)

    first = execute("test", 5, partial(_unit, tmp_path), Share(), workers=2)
    assert [d.name for d in first] == [f"u{i}" for i in range(5)] and not any(d.reused for d in first)
    assert all(d.record["pid"] != os.getpid() for d in first)    # in the pool, not here
    (tmp_path / "u3").write_text("damaged\n")    # same unit, a file that no longer checks: redone alone
    again = execute("test", 5, partial(_unit, tmp_path), Share(1, 2))
    assert [(d.name, d.reused) for d in again] == [("u1", True), ("u3", False)]


def test_dedup_stages_as_array_tasks_equal_the_local_run(tmp_path):
    corpus = generate(600, seed=7, words=(30, 50))
    files = write_jsonl(corpus, tmp_path / "in", 3)
    spec = InputSpec(files)
    cfg = DedupRunConfig(DedupConfig(num_perm=64, band_ranges=2), StagesConfig())
    local = run_local(spec, cfg, tmp_path / "local", 3, workers=2)
    merged = []
    for stage in ("signatures", "merge", "clusters", "filter"):
        for task in range(1 if stage == "clusters" else 3):
            done = run_task(stage, spec, cfg, tmp_path / "array", task, 3)
            if stage == "merge":
                merged += [d.name for d in done]
    assert sorted(merged) == sorted(p.stem for p in (tmp_path / "local" / "pairs").glob("*.npy"))
    for sub in ("kept", "manifest"):
        for a in sorted((tmp_path / "local" / sub).glob("part-*.jsonl")):
            assert a.read_bytes() == (tmp_path / "array" / sub / a.name).read_bytes()
    summary = json.loads((tmp_path / "array" / "clusters" / "DONE.json").read_text())
    assert summary["dropped"] == local["dropped"] > 0
