"""Prepare work is never lost or silently wrong (issue 24): the same command started twice at once, another
tokenizer given to a later step, work files cut or damaged between steps, a damaged plan and a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from native_megatron.data.pipeline import PreprocessConfig, run_preprocess
from native_megatron.utils.config import ConfigError, load_config
from tests.helpers.paths import ROOT, SAMPLE_CORPUS, SAMPLE_TOKENIZER

TOOL = ROOT / "tools" / "preprocess_aligned.py"
OUTPUTS = ("_text_document.bin", "_text_document.idx", "_manifest.jsonl")


def cfg(prefix, *overrides, inputs=(SAMPLE_CORPUS,), tokenizer=SAMPLE_TOKENIZER):
    base = {"input.paths": [str(p) for p in inputs], "output.prefix": str(prefix), "tokenize.tokenizer": str(tokenizer),
            "run.workers": 1, "run.progress": False, "run.tasks": 3}
    return load_config(PreprocessConfig, overrides=list(overrides), base=base)


def outputs(prefix) -> dict[str, bytes]:
    return {s: Path(f"{prefix}{s}").read_bytes() for s in OUTPUTS}


def cli(*args, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(TOOL), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The sample prepared and tokenized once, 3 tasks, without interference."""
    prefix = tmp_path_factory.mktemp("straight") / "s"
    stats = run_preprocess(cfg(prefix))
    return prefix, stats


@pytest.mark.slow
def test_the_same_command_started_while_the_first_is_cleaning_loses_nothing(tmp_path):
    """Fault 1: the second run's stale-file cleanup deleted the live run's temporary files."""
    lines = SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for copy in range(4):     # distinct copies: enough work for the second run to meet the first
            for i, line in enumerate(lines):
                row = json.loads(line)
                if isinstance(row.get("text"), str):
                    row["text"] += f"\nالنسخة {copy} من المستند {i}."
                row["id"] = f"{row.get('id', i)}-{copy}"
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    prefix = tmp_path / "out" / "c"
    args = ["--input", corpus, "--tokenizer", SAMPLE_TOKENIZER, "--output-prefix", prefix, "--no-progress",
            "--run.workers=1", "--run.tasks=3", "--dedup.near=false"]
    first = cli(*args)
    work = Path(f"{prefix}_work") / "prepare"
    deadline = time.monotonic() + 120
    while not list(work.glob("task-*/.candidates.tokens.*.tmp")) and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = cli(*args)
    results = [p.communicate(timeout=600) for p in (first, second)]
    for p, (_, err) in zip((first, second), results):
        assert p.returncode == 0, err[-3000:]
    stats = json.loads(Path(f"{prefix}_stats.json").read_text())
    assert stats["documents_in"] == 4 * len(lines)
    rows = Path(f"{prefix}_manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4 * len(lines)
    assert sum(json.loads(r)["status"] == "kept" for r in rows) == stats["documents_written"] > 3 * 300
    assert sum(json.load(open(p))["documents_in"] for p in work.glob("task-*/clean.json")) == 4 * len(lines)
    assert not list(work.rglob("*.lease")) and not list(work.rglob(".*.tmp"))


@pytest.mark.slow
def test_work_files_cut_or_damaged_between_steps_are_redone_or_named(straight, tmp_path):
    """Faults 3 and 5: a truncated candidates.tokens or part.bin, a damaged part.idx, band .npy, clean.json
    or filter.json is found and its unit redone, giving the same dataset; a damaged plan is one line."""
    prefix, _ = straight
    expected = outputs(prefix)
    mine = tmp_path / "d"
    run_preprocess(cfg(mine))
    assert outputs(mine) == expected
    task = [Path(f"{mine}_work") / "prepare" / f"task-{t:05d}" for t in range(3)]
    with open(task[1] / "part.bin", "r+b") as f:
        f.truncate(1000)
    # A later step alone names the damaged file and the step to rerun.
    with pytest.raises(ConfigError, match=r"part.bin is 1,000 bytes, its step wrote [\d,]+: rerun --stage filter "
                                          r"\(task 1\)"):
        run_preprocess(cfg(mine, "--run.stage=tokenize"))
    with open(task[0] / "candidates.tokens", "r+b") as f:
        f.truncate(1000)
    band = Path(f"{mine}_work") / "prepare" / "dedup" / "signatures" / "task-00002" / "band-000.npy"
    data = bytearray(band.read_bytes())
    data[-5] ^= 0xFF
    band.write_bytes(bytes(data))
    (task[1] / "clean.json").write_text('{"identity": "')
    idx = bytearray((task[2] / "part.idx").read_bytes())
    idx[-3] ^= 0xFF
    (task[2] / "part.idx").write_bytes(bytes(idx))
    (task[2] / "filter.json").write_bytes(b"\xff\xfe not json")
    # Filter, given a candidates file cut since clean, names it (an array's --stage filter).
    (task[0] / "filter.json").unlink()
    with pytest.raises(ConfigError, match=r"candidates.tokens is 1,000 bytes, its step wrote [\d,]+: rerun --stage "
                                          r"clean \(task 0\)"):
        run_preprocess(cfg(mine, "--run.stage=filter", "--run.task=0"))
    stats = run_preprocess(cfg(mine))
    assert outputs(mine) == expected
    # Every clean unit and every filter redone (task 0's filter marker was removed above).
    assert stats["timing"]["prepare_reused"]["clean"] == 0 and stats["timing"]["prepare_reused"]["filter"] == 0

    # A merge unit to redo reads a band file damaged since stage 1: one line naming it, not a numpy traceback.
    dedup = Path(f"{mine}_work") / "prepare" / "dedup"
    for marker in dedup.glob("pairs/band-000*.done.json"):
        marker.unlink()
    band = dedup / "signatures" / "task-00001" / "band-000.npy"
    with open(band, "r+b") as f:
        f.truncate(200)
    with pytest.raises(ConfigError, match=r"band-000.npy is 200 bytes, its step wrote [\d,]+: rerun stage 1 \(prepare: "
                                          r"--stage clean\) for task 1"):
        run_preprocess(cfg(mine, "--run.stage=merge"))

    plan = Path(f"{mine}_work") / "prepare" / "plan.json"
    # An earlier version's plan (its input identity was called "fingerprint") is named as such, not "damaged".
    made = json.loads(plan.read_text())
    plan.write_text(json.dumps({"fingerprint" if k == "identity" else k: v for k, v in made.items()}))
    with pytest.raises(ConfigError, match=r"plan.json was written by an earlier version of native_megatron"):
        run_preprocess(cfg(mine))
    plan.write_text("{")
    with pytest.raises(ConfigError, match=r"plan.json is damaged; pass --overwrite"):
        run_preprocess(cfg(mine))


def _train_sentencepiece(corpus: Path, out: Path, vocab: int) -> Path:
    import sentencepiece as spm

    texts = [json.loads(line).get("text") for line in corpus.read_text(encoding="utf-8").splitlines()]
    (out.parent / "train.txt").write_text("\n".join(t for t in texts if isinstance(t, str)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(out.parent / "train.txt"), model_prefix=str(out), vocab_size=vocab,
                                   model_type="unigram", character_coverage=1.0, num_threads=1,
                                   minloglevel=2)
    return Path(f"{out}.model")


@pytest.mark.slow
def test_another_tokenizer_given_to_a_later_step_is_refused_naming_it(straight, tmp_path):
    """Fault 2: prepare tokenized with one model; --stage filter or tokenize with another is refused."""
    prefix, stats = straight
    other = _train_sentencepiece(SAMPLE_CORPUS, tmp_path / "other", 600)
    for stage in ("filter", "tokenize"):
        with pytest.raises(ConfigError, match=r"prepared with other settings \(tokenizer.sha256: \"\w+\" -> \"\w+\"; "
                                              r"tokenizer.vocab_size: \d+ -> 600"):
            run_preprocess(cfg(prefix, f"--run.stage={stage}", tokenizer=other))
    # The same tokenizer copied elsewhere is the same tokenizer.
    copy = tmp_path / "copy.model"
    copy.write_bytes(SAMPLE_TOKENIZER.read_bytes())
    again = run_preprocess(cfg(prefix, "--run.stage=tokenize", tokenizer=copy))
    assert again["tokens_written"] == stats["tokens_written"]


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_a_non_zero_exit(tmp_path):
    """Fault 5: ENOSPC while writing work files (a real, small tmpfs) is one line, not a traceback."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        p = cli("--input", SAMPLE_CORPUS, "--tokenizer", SAMPLE_TOKENIZER, "--output-prefix", disk / "x",
                "--no-progress", "--run.workers=1")
        _, err = p.communicate(timeout=300)
        assert p.returncode == 5
        line = one_error_line(err)
        assert line.startswith("error: no space left on the device") and str(disk) in line, line
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_stats_record_the_dataset_files_and_clean_records_its_token_width(straight):
    """The _stats.json contract the trainer checks (dataset_files), and fault 2's second half: filter reads
    candidates.tokens with the width clean wrote, not the one its own command line gives."""
    import hashlib

    prefix, stats = straight
    dataset = Path(f"{prefix}_text_document")
    idx = Path(f"{dataset}.idx").read_bytes()
    assert stats["dataset_files"] == {dataset.name: {"bin_bytes": Path(f"{dataset}.bin").stat().st_size,
                                                     "idx_bytes": len(idx),
                                                     "idx_blake2b": hashlib.blake2b(idx).hexdigest()}}
    assert json.loads(Path(f"{prefix}_stats.json").read_text())["dataset_files"] == stats["dataset_files"]
    task = Path(f"{prefix}_work") / "prepare" / "task-00000"
    clean = json.loads((task / "clean.json").read_text())
    assert clean["token_dtype"] == "uint16"
    lengths = np.load(task / "candidates.lengths.npy")
    assert 2 * lengths.sum() == clean["files"]["candidates.tokens"]["bytes"]
