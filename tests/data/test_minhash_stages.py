"""The four-stage on-disk dedup: same answer as the in-memory path, whatever the layout, after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from native_megatron.data.dedup import DedupConfig, fingerprint
from native_megatron.data.neardup import (
    Decisions,
    StagesConfig,
    build_clusters,
    fingerprints,
    make_key,
    merge_buckets,
    write_fingerprints,
)
from tests.helpers.inmemory_dedup import Deduplicator
from tests.helpers.paths import ROOT, SAMPLE_CORPUS
from tests.helpers.planted_corpus import generate, truly_dropped, write_jsonl

CONFIG = DedupConfig()


def staged(fps: list[tuple], run_dir: Path, tasks: int, stages: StagesConfig, config: DedupConfig = CONFIG,
           merge_tasks: int | None = None) -> dict[int, tuple[str, str]]:
    """Run the four stages in this process with ``tasks`` contiguous stage-1 tasks; the decisions by key."""
    for t in range(tasks):
        write_fingerprints(t, tasks, fps[t * len(fps) // tasks:(t + 1) * len(fps) // tasks], run_dir, config)
    merge_tasks = merge_tasks or tasks
    for t in range(merge_tasks):
        merge_buckets(t, merge_tasks, run_dir, config, stages)
    build_clusters(run_dir, config, stages)
    decisions = Decisions(run_dir)
    return {key: d for key, _, _ in fps if (d := decisions.check(key)) is not None}


@pytest.fixture(scope="module")
def planted():
    corpus = generate(5000, seed=3, words=(30, 50))
    fps = list(fingerprints(((make_key(i // 1000, i % 1000), doc_id, text)
                             for i, (doc_id, text) in enumerate(zip(corpus.ids, corpus.texts))), CONFIG))
    return corpus, fps


def test_same_decisions_as_the_in_memory_deduplicator_on_the_sample(tmp_path):
    rows = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()]
    dedup = Deduplicator(CONFIG)
    expected = {}
    for line, row in enumerate(rows, start=1):
        found = dedup.check(row["id"], fingerprint(row["text"], CONFIG))
        if found is not None:
            expected[make_key(0, line)] = found
    fps = list(fingerprints(((make_key(0, line), r["id"], r["text"]) for line, r in enumerate(rows, 1)), CONFIG))
    got = staged(fps, tmp_path, 3, StagesConfig(), DedupConfig(band_ranges=2))
    assert len(expected) == 8
    assert got == expected


def test_one_task_and_four_tasks_give_the_same_answer(planted, tmp_path):
    corpus, fps = planted
    one = staged(fps, tmp_path / "one", 1, StagesConfig())
    four = staged(fps, tmp_path / "four", 4, StagesConfig(window_records=700),
                  DedupConfig(band_ranges=3, exact_ranges=2), merge_tasks=5)
    assert one == four
    keys = [k for k, _, _ in fps]
    dropped = {keys.index(k) for k in one}
    # Planted pairs at Jaccard >= 0.9 are found; nothing outside the planted groups is dropped.
    assert len(truly_dropped(corpus, 0.9) - dropped) <= 0.02 * len(truly_dropped(corpus, 0.9))
    assert dropped <= truly_dropped(corpus, 0.5)
    # Each group keeps its first member, and every drop names a kept document.
    kept_ids = {doc_id for k, doc_id, _ in fps if k not in one}
    assert {d[1] for d in one.values()} <= kept_ids


def test_incremental_run_against_an_earlier_one(planted, tmp_path):
    corpus, fps = planted
    half = len(fps) // 2
    both = staged(fps, tmp_path / "both", 2, StagesConfig())
    staged(fps[:half], tmp_path / "old", 2, StagesConfig())
    new = staged(fps[half:], tmp_path / "new", 2, StagesConfig(), DedupConfig(against=str(tmp_path / "old")))
    expected = {k: d for k, d in both.items() if k >= fps[half][0]}
    # The earlier run's own duplicates are not in its index, so the few groups joined only through
    # one of them are not seen (fewer drops), or are kept by a later first member.
    assert set(new) <= set(expected) and len(new) >= 0.97 * len(expected)
    assert sum(new[k] == expected[k] for k in new) >= 0.98 * len(new)
    old_ids = {doc_id for _, doc_id, _ in fps[:half]}
    assert sum(d[1] in old_ids for d in new.values()) > 50  # matches pointing into the earlier run


def test_changed_settings_refuse_an_earlier_run(planted, tmp_path):
    _, fps = planted
    staged(fps[:500], tmp_path / "old", 1, StagesConfig())
    write_fingerprints(0, 1, fps[500:1000], tmp_path / "new", DedupConfig(num_perm=64))
    from native_megatron.utils.config import ConfigError

    with pytest.raises(ConfigError, match="other settings"):
        merge_buckets(0, 1, tmp_path / "new", DedupConfig(num_perm=64, against=str(tmp_path / "old")), StagesConfig())


def _cli(run_dir: Path, files: list[str], **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "native_megatron.cli.dedup", "all", "--input", *files,
           "--run-dir", str(run_dir), "--tasks", "4", "--workers", "1"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_kill_during_stage_one_then_rerun_gives_the_same_result(tmp_path):
    corpus = generate(1600, seed=5, words=(30, 50))
    files = write_jsonl(corpus, tmp_path / "in", 4)
    run_dir = tmp_path / "run"
    proc = _cli(run_dir, files, start_new_session=True)
    first_done = run_dir / "signatures" / "task-00000" / "DONE.json"
    deadline = time.monotonic() + 60
    while not first_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first_done.exists() and not (run_dir / "clusters" / "DONE.json").exists()
    stamp = first_done.stat().st_mtime_ns
    rerun = _cli(run_dir, files)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    assert first_done.stat().st_mtime_ns == stamp  # the finished task was not redone
    rows = [json.loads(x) for p in sorted((run_dir / "manifest").glob("part-*.jsonl")) for x in p.open()]
    assert len(rows) == len(corpus.texts) and sum(r["status"] == "dropped" for r in rows) == json.loads(out)["dropped"]
    docs = [(make_key(f, line), d["id"], d["text"]) for f, path in enumerate(files)
            for line, d in enumerate(map(json.loads, open(path, encoding="utf-8")), start=1)]
    fps = list(fingerprints(docs, CONFIG))
    clean = staged(fps, tmp_path / "clean", 1, StagesConfig())
    assert {make_key(files.index(r["file"]), r["line"]): (r["reason"], r["duplicate_of"])
            for r in rows if r["status"] == "dropped"} == clean
