"""The SLURM preprocessing scripts: the submit script chains the stage arrays, and the stage script,
run as each array task would run it, gives the dataset of one plain run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT, SAMPLE_CORPUS, SAMPLE_TOKENIZER, same_bytes

SUBMIT = ROOT / "examples" / "slurm" / "preprocess_submit.sh"
STAGE = ROOT / "examples" / "slurm" / "preprocess_aligned.sbatch"


def fake_sbatch(directory: Path) -> Path:
    """An sbatch that records its arguments, one call per line, and answers job ids 101, 102, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "sbatch"
    script.write_text('#!/bin/bash\nn=$(( $(wc -l < "$FAKE_SLURM_LOG" 2>/dev/null || echo 0) + 101 ))\n'
                      'printf "%s\\n" "$*" >> "$FAKE_SLURM_LOG"\necho "$n"\n')
    script.chmod(0o755)
    return directory


@pytest.mark.parametrize("rewrite", ["vllm", "none"])
def test_submit_chains_every_stage_with_afterok(tmp_path, rewrite):
    log = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{fake_sbatch(tmp_path / 'bin')}:{os.environ['PATH']}", FAKE_SLURM_LOG=str(log),
               TASKS="8", MERGE_TASKS="5", REWRITE=rewrite, REWRITE_TASKS="4", GPUS_PER_TASK="2")
    out = subprocess.run(["bash", str(SUBMIT), "--dedup.band_ranges=2"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    stages = ["clean", "merge", "clusters", "filter"] + (["rewrite"] if rewrite != "none" else []) + ["tokenize"]
    arrays = {"clean": "0-7", "merge": "0-4", "clusters": "0", "filter": "0-7", "rewrite": "0-3", "tokenize": "0"}
    assert len(calls) == len(stages)
    for i, (stage, call) in enumerate(zip(stages, calls)):
        assert f"--export=ALL,STAGE={stage}" in call and f"--array={arrays[stage]}" in call
        assert (f"--dependency=afterok:{100 + i}" in call) == (i > 0)
        assert call.endswith("--dedup.band_ranges=2")
        assert ("--gpus-per-task=2" in call) == (stage == "rewrite")
        assert ("--run.tasks=8" in call) == (stage == "clean")
    assert out.stdout.split()[-1] == f"tokenize={100 + len(stages)}"


@pytest.mark.slow
def test_each_array_task_run_as_slurm_would_gives_the_plain_runs_dataset(tmp_path):
    plain = tmp_path / "plain" / "s"
    common = ["--rewrite", "none", "--no-progress", "--input", str(SAMPLE_CORPUS), "--tokenizer",
              str(SAMPLE_TOKENIZER), "--workers", "1"]
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "preprocess_aligned.py"), *common,
                           "--output-prefix", str(plain)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    prefix = tmp_path / "array" / "s"
    base = dict(os.environ, PYTHON=sys.executable, REPO=str(ROOT), INPUT=str(SAMPLE_CORPUS),
                OUTPUT_PREFIX=str(prefix), TOKENIZER=str(SAMPLE_TOKENIZER), REWRITE="none", WORKERS="1")
    for stage, count in [("clean", 3), ("merge", 2), ("clusters", 1), ("filter", 3), ("tokenize", 1)]:
        for index in range(count):
            env = dict(base, STAGE=stage, SLURM_ARRAY_TASK_ID=str(index), SLURM_ARRAY_TASK_COUNT=str(count),
                       SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX=str(count - 1))
            run = subprocess.run(["bash", str(STAGE)], capture_output=True, text=True, env=env, cwd=tmp_path)
            assert run.returncode == 0, f"{stage} {index}: {run.stderr[-2000:]}"
    for suffix in ("_text_document.bin", "_text_document.idx", "_manifest.jsonl"):
        assert same_bytes(f"{plain}{suffix}", f"{prefix}{suffix}"), suffix
