"""Prepare as N tasks: the same manifest and dataset bytes for 1 task, 4 tasks or a SLURM array,
incremental dedup against an earlier run, and kill -9 at any step followed by a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from native_megatron.data.pipeline import PreprocessConfig, run_preprocess
from native_megatron.utils.config import ConfigError, load_config
from tests.helpers.paths import ROOT, SAMPLE_TOKENIZER, same_bytes
from tests.helpers.planted_corpus import generate, write_jsonl

# The planted documents are random words: the language and quality filters would drop them all.
PLANTED_CLEANING = ["--clean.language=", "--clean.quality.enabled=false"]
OUTPUTS = ("_text_document.bin", "_text_document.idx", "_manifest.jsonl")


def cfg(inputs, prefix, *overrides, workers=2):
    base = {"input.paths": [str(p) for p in inputs], "output.prefix": str(prefix),
            "tokenize.tokenizer": str(SAMPLE_TOKENIZER), "run.workers": workers, "run.progress": False}
    return load_config(PreprocessConfig, overrides=PLANTED_CLEANING + list(overrides), base=base)


def manifest(prefix):
    return [json.loads(line) for line in Path(f"{prefix}_manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def same_outputs(a, b) -> bool:
    return all(same_bytes(f"{a}{s}", f"{b}{s}") for s in OUTPUTS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    planted = generate(3000, seed=5, words=(30, 50))
    files = write_jsonl(planted, tmp_path_factory.mktemp("planted"), 5)
    return planted, files


@pytest.fixture(scope="module")
def one_task(corpus, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("one") / "p"
    stats = run_preprocess(cfg(corpus[1], prefix, "--run.tasks=1"))
    return prefix, stats


def test_four_tasks_give_the_manifest_and_dataset_of_one_task(corpus, one_task, tmp_path):
    planted, files = corpus
    prefix, stats = one_task
    four = run_preprocess(cfg(files, tmp_path / "p", "--run.tasks=4"))
    assert (stats["prepare_tasks"], four["prepare_tasks"]) == (1, 4)
    assert same_outputs(prefix, tmp_path / "p")
    rows = manifest(prefix)
    assert len(rows) == len(planted.texts)
    # Each planted group keeps its first copy in input order; every drop names a kept member of its group.
    position = {doc_id: i for i, doc_id in enumerate(planted.ids)}
    group_of = {m: g for g, members in enumerate(planted.groups) for m in members}
    status = {r["id"]: r for r in rows}
    dropped = [r for r in rows if r.get("duplicate_of")]
    assert stats["dropped_by_reason"]["near_duplicate"] > 50 and stats["dropped_by_reason"]["exact_duplicate"] > 50
    for r in dropped:
        a, b = position[r["id"]], position[r["duplicate_of"]]
        assert group_of[a] == group_of[b] and b < a and status[r["duplicate_of"]]["status"] == "kept"
    for members in planted.groups:
        assert status[planted.ids[min(members)]]["status"] == "kept"


def test_a_slurm_array_runs_the_steps_one_job_at_a_time(corpus, one_task, tmp_path, monkeypatch):
    _, files = corpus
    prefix = tmp_path / "a"

    def array(stage, count):
        for index in range(count):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(index))
            monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", str(count))
            monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
            monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", str(count - 1))
            out = run_preprocess(cfg(files, prefix, f"--run.stage={stage}"))
            assert out == {"prepare_step": {"step": stage, "task": index, "tasks": 3}}
        for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                     "SLURM_ARRAY_TASK_MAX"):
            monkeypatch.delenv(name)

    array("clean", 3)
    with pytest.raises(ConfigError, match="unfinished"):
        run_preprocess(cfg(files, prefix, "--run.stage=tokenize"))
    with pytest.raises(ConfigError, match=r"prepared with other settings \(dedup.threshold: 0.7 -> 0.8\)"):
        run_preprocess(cfg(files, prefix, "--run.stage=merge", "--dedup.threshold=0.8"))
    array("merge", 2)
    run_preprocess(cfg(files, prefix, "--run.stage=clusters"))
    array("filter", 3)
    stats = run_preprocess(cfg([], prefix, "--run.stage=tokenize"))
    assert stats["prepare_tasks"] == 3
    assert same_outputs(one_task[0], prefix)
    # One task of an array cannot run every step: it says what to run instead.
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    with pytest.raises(ConfigError, match="run --stage clean, merge, clusters, filter, then tokenize"):
        run_preprocess(cfg(files, tmp_path / "b"))
    # Nor may a task delete what the others share; the finished work is still there.
    with pytest.raises(ConfigError, match="--overwrite in a job array"):
        run_preprocess(cfg(files, prefix, "--run.stage=clean", "--output.overwrite=true"))
    assert (tmp_path / "a_work" / "prepare" / "task-00002" / "filter.json").exists()


def test_dedup_against_an_earlier_run_drops_copies_of_its_documents(corpus, one_task, tmp_path):
    _, files = corpus
    first, second = tmp_path / "first", tmp_path / "second"
    run_preprocess(cfg(files[:2], first))
    stats = run_preprocess(cfg(files[2:], second, f"--dedup.against={first}"))
    assert stats["dedup"]["against_matches"] > 20
    earlier = {r["id"]: r["status"] for r in manifest(first)}
    whole = {r["id"]: r for r in manifest(one_task[0])}
    rows = manifest(second)
    drops = {r["id"] for r in rows if r["status"] == "dropped"}
    for r in rows:
        if r.get("duplicate_of") in earlier:
            assert earlier[r["duplicate_of"]] == "kept"
    # What the whole corpus in one run drops among these files, the incremental run drops too
    # (but for copies joined to the first run only through a document it dropped).
    expected = {i for i in (r["id"] for r in rows) if whole[i]["status"] == "dropped"}
    assert drops <= expected and len(drops) >= 0.95 * len(expected)
    with pytest.raises(ConfigError, match="other settings"):
        run_preprocess(cfg(files[2:], tmp_path / "third", f"--dedup.against={first}", "--dedup.num_perm=64"))
    with pytest.raises(ConfigError, match="no finished dedup"):
        run_preprocess(cfg(files[2:], tmp_path / "fourth", f"--dedup.against={tmp_path / 'nothing'}"))


def test_a_changed_task_count_over_finished_work_is_refused(corpus, tmp_path):
    _, files = corpus
    run_preprocess(cfg(files[:1], tmp_path / "c", "--run.tasks=2", "--run.stage=clean"))
    with pytest.raises(ConfigError, match="split into 2 tasks.*--run.tasks=2"):
        run_preprocess(cfg(files[:1], tmp_path / "c", "--run.tasks=3"))


def test_array_tasks_starting_together_do_not_refuse_each_others_plan_in_progress(corpus, tmp_path):
    """Task 0 has made the prepare directory and is still writing plan.json when task 1 looks."""
    _, files = corpus
    prefix = tmp_path / "race"
    prepare = tmp_path / "race_work" / "prepare"
    prepare.mkdir(parents=True)
    (prepare / ".plan.json.x1y2z3.tmp").write_text("{")            # atomic_open's file, half written
    (prepare / "dedup" / "signatures" / "task-00000").mkdir(parents=True)
    out = run_preprocess(cfg(files[:2], prefix, "--run.tasks=2", "--run.stage=clean", "--run.task=1"))
    assert out["prepare_step"] == {"step": "clean", "task": 1, "tasks": 2}


# ---- kill -9 at any step ---------------------------------------------------------------


def _command(files, prefix):
    return [sys.executable, str(ROOT / "tools" / "preprocess_aligned.py"), "--input", *map(str, files),
            "--tokenizer", str(SAMPLE_TOKENIZER), "--output-prefix", str(prefix), "--rewrite", "none",
            "--no-progress", "--run.tasks=6", "--run.workers=2", *PLANTED_CLEANING]


def _markers(prefix) -> dict[str, tuple[int, bytes]]:
    work = Path(f"{prefix}_work")
    found = {}
    for pattern in ("prepare/task-*/clean.json", "prepare/task-*/filter.json", "prepare/dedup/pairs/*.done.json",
                    "prepare/dedup/clusters/DONE.json", "prepare/dedup/signatures/task-*/DONE.json"):
        for p in work.glob(pattern):
            found[str(p.relative_to(work))] = (p.stat().st_mtime_ns, p.read_bytes())
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    planted = generate(6000, seed=7, words=(30, 50))
    work = tmp_path_factory.mktemp("kill")
    files = write_jsonl(planted, work / "in", 6)
    straight = work / "straight" / "p"
    done = subprocess.run(_command(files, straight), capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return planted, files, straight


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.mark.slow
@pytest.mark.parametrize("when", ["prepare/task-00002/clean.json", "prepare/dedup/pairs/band-003-r000.done.json",
                                  "prepare/task-00001/filter.json"], ids=["clean", "merge", "filter"])
def test_kill_9_at_any_step_then_rerun_repeats_nothing_and_loses_nothing(uninterrupted, tmp_path, when):
    planted, files, straight = uninterrupted
    env = _env()
    killed = tmp_path / "killed" / "p"
    proc = subprocess.Popen(_command(files, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    marker = Path(f"{killed}_work") / when
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)   # the tool and its workers; no handler runs
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: make the corpus larger"
    before = _markers(killed)
    assert when in before
    # A task's signatures are finished work only once its clean step is (else they are redone).
    before = {k: v for k, v in before.items() if "/signatures/" not in k
              or f"prepare/{k.split('/')[3]}/clean.json" in before}

    rerun = subprocess.run(_command(files, killed), capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert same_outputs(straight, killed)
    # Nothing finished before the kill was done again: its marker is the same file, untouched.
    after = _markers(killed)
    assert {k: after.get(k) for k in before} == before
    rows = manifest(killed)
    assert len(rows) == len(planted.texts) == len({(r["file"], r["line"]) for r in rows})
    assert not list(Path(killed).parent.rglob("*.tmp[0-9]*"))
