"""kill -9 part-way through preprocessing, then the same command again: the outputs are byte-identical
to an uninterrupted run's, and every input line is in the manifest exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "preprocess_aligned.py"
SAMPLE = ROOT / "examples" / "data" / "sample_ar.jsonl"
TOKENIZER = ROOT / "examples" / "tokenizer" / "sample_ar.model"
COPIES = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The sample, 12 times, each copy's documents made distinct so that nothing is a duplicate."""
    path = tmp_path_factory.mktemp("kill") / "corpus.jsonl"
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(COPIES):
            for i, line in enumerate(lines):
                row = json.loads(line)
                row["id"] = f"{row.get('id', i)}-{copy}"
                if isinstance(row.get("text"), str):
                    row["text"] = f"{row['text']}\nالنسخة رقم {copy} من المستند {i}."
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def command(corpus: Path, prefix: Path) -> list[str]:
    return [sys.executable, str(TOOL), "--input", str(corpus), "--tokenizer", str(TOKENIZER),
            "--output-prefix", str(prefix), "--rewrite", "none", "--no-progress", "--dedup.near=false",
            "--output.shard_size=500", "--run.workers=2"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs(prefix: Path) -> dict[str, str]:
    names = ["_text_document.bin", "_text_document.idx", "_manifest.jsonl"]
    return {n: digest(Path(f"{prefix}{n}")) for n in names}


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


@pytest.mark.slow
@pytest.mark.parametrize("share", [0.3, 0.7], ids=["during_prepare", "later"])
def test_kill_9_then_rerun_gives_the_uninterrupted_outputs(tmp_path, corpus, share):
    straight = tmp_path / "straight" / "out"
    start = time.monotonic()
    done = subprocess.run(command(corpus, straight), capture_output=True, text=True, env=env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The kill lands at a share of an uninterrupted run's time, not after fixed seconds: an idle machine
    # finished the whole run before a fixed 6 s kill.
    after = share * (time.monotonic() - start)

    killed = tmp_path / "killed" / "out"
    proc = subprocess.Popen(command(corpus, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(), start_new_session=True)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGKILL)  # the tool and its worker processes, no handler runs
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: make the corpus larger"
    rerun = subprocess.run(command(corpus, killed), capture_output=True, text=True, env=env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    assert outputs(killed) == outputs(straight)
    rows = [json.loads(line) for line in Path(f"{killed}_manifest.jsonl").read_text().splitlines()]
    assert len(rows) == COPIES * len(SAMPLE.read_text(encoding="utf-8").splitlines())
    assert len({(r["file"], r["line"]) for r in rows}) == len(rows)
    assert not list(Path(killed).parent.rglob("*.tmp[0-9]*"))
