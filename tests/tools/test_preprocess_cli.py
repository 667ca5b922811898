"""The command line as a user meets it: --help, one-line errors before any work, the summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "preprocess_aligned.py"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_help_reads_well():
    out = run("--help")
    assert out.returncode == 0
    for flag in ("--input", "--output-prefix", "--tokenizer", "--rewrite", "--text-key", "--workers", "--stage"):
        assert flag in out.stdout


@pytest.mark.parametrize("case", ["no_tokenizer", "bad_tokenizer", "no_input", "unwritable", "bad_key",
                                  "bad_value"])
def test_setup_mistakes_give_one_error_line_and_do_no_work(tmp_path, sample_corpus, sample_tokenizer, case):
    prefix = tmp_path / "out" / "x"
    args = ["--input", sample_corpus, "--tokenizer", sample_tokenizer, "--output-prefix", prefix]
    expected = {
        "no_tokenizer": "tokenizer not found",
        "bad_tokenizer": "expected a sentencepiece .model",
        "no_input": "input not found",
        "unwritable": "not writable",
        "bad_key": "unknown config key 'clean.min_char'",
        "bad_value": "dedup.threshold must be in (0, 1]",
    }[case]
    if case == "no_tokenizer":
        args[3] = tmp_path / "missing.model"
    elif case == "bad_tokenizer":
        (tmp_path / "tok.txt").write_text("x")
        args[3] = tmp_path / "tok.txt"
    elif case == "no_input":
        args[1] = tmp_path / "missing.jsonl"
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        args[5] = tmp_path / "file" / "sub" / "x"
    elif case == "bad_key":
        args.append("--clean.min_char=5")
    elif case == "bad_value":
        args.append("--dedup.threshold=2")
    out = run(*args)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_run_prints_a_summary(tmp_path, sample_corpus, sample_tokenizer):
    prefix = tmp_path / "x"
    out = run("--input", sample_corpus, "--tokenizer", sample_tokenizer, "--output-prefix", prefix,
              "--rewrite", "none", "--workers", "2", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "documents:" in out.stdout and "kept" in out.stdout
    assert f"{prefix}_text_document.bin/.idx" in out.stdout
    assert (tmp_path / "x_config.yaml").exists() and (tmp_path / "x_stats.json").exists()
