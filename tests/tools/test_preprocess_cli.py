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


def test_one_line_with_a_lone_surrogate_is_a_counted_skip_not_a_crash(tmp_path, sample_corpus, sample_tokenizer):
    import json

    corpus = tmp_path / "in.jsonl"
    lines = Path(sample_corpus).read_bytes().splitlines(keepends=True)
    good = ("هذه وثيقة عربية سليمة تماما تتحدث عن تاريخ مدينة بغداد ومكتبتها الكبيرة "
            "التي جمعت العلماء والمترجمين من كل مكان في العصر العباسي الذهبي.")
    bad = b'{"id": "bad", "text": "\\ud800 ' + good.encode() + b'"}\n'
    corpus.write_bytes(b"".join(lines[:20]) + bad + b"".join(lines[20:40]))
    prefix = tmp_path / "x"
    for _ in range(2):      # a rerun must not die on the same line either
        out = run("--input", corpus, "--tokenizer", sample_tokenizer, "--output-prefix", prefix,
                  "--workers", "1", "--no-progress")
        assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in open(f"{prefix}_manifest.jsonl", encoding="utf-8")]
    assert rows[20]["line"] == 21 and rows[20]["reason"] == "invalid_utf8"
    assert json.loads((tmp_path / "x_stats.json").read_text())["dropped_by_reason"]["invalid_utf8"] == 1


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_wrong_text_key_is_one_error_line_listing_the_keys_and_no_dataset(tmp_path, sample_corpus,
                                                                            sample_tokenizer, fmt):
    corpus = sample_corpus
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        corpus = tmp_path / "c.parquet"
        pq.write_table(pa.table({"id": ["a"], "text": ["نص"]}), corpus)
    prefix = tmp_path / "out" / "x"
    out = run("--input", corpus, "--tokenizer", sample_tokenizer, "--output-prefix", prefix,
              "--text-key", "body", "--no-progress")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    listed = "(columns: id, text)" if fmt == "parquet" else "(keys seen: id, source, text, url)"
    assert last.startswith("error: ") and "'body'" in last and listed in last
    assert not (tmp_path / "out").exists()


def test_a_run_that_keeps_nothing_exits_non_zero_without_a_dataset(tmp_path, sample_corpus, sample_tokenizer):
    prefix = tmp_path / "x"
    out = run("--input", sample_corpus, "--tokenizer", sample_tokenizer, "--output-prefix", prefix,
              "--clean.min_chars=900000", "--workers", "1", "--no-progress")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: no document kept")
    assert not list(tmp_path.glob("x_text_document*"))
    assert (tmp_path / "x_manifest.jsonl").exists() and (tmp_path / "x_stats.json").exists()
