"""tools/preprocess_aligned.py with a rewriter as a user meets it, against servers on 127.0.0.1: a dead
endpoint or a missing backend fails in seconds with one line and no work done, an endpoint lost
mid-run stops the run with one line, and a run that rewrote too little fails instead of passing for
an aligned dataset."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from native_megatron.alignment.pipeline import AlignedPreprocessConfig, run_preprocess_aligned
from native_megatron.utils.config import ConfigError, load_config
from tests.helpers.ports import free_port
from tests.helpers.servers import ExpertServer

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "preprocess_aligned.py"
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"


def refused(text: str) -> str:
    """``text`` with REFUSE in its longest line, where cleaning leaves it (a short line may go)."""
    lines = text.split("\n")
    longest = max(range(len(lines)), key=lambda k: len(lines[k]))
    lines[longest] += " REFUSE"
    return "\n".join(lines)


def docs(tmp_path: Path, sample_corpus, n: int = 12, refuse=()) -> Path:
    """``n`` sample documents that survive cleaning; those in ``refuse`` make the expert refuse."""
    texts = [t for t in (json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8"))
             if 400 < len(t) < 1500][:n]
    rows = [{"id": f"d{i}", "text": refused(t) if i in refuse else t} for i, t in enumerate(texts)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def arguments(inputs, prefix, tokenizer, url, *extra) -> list[str]:
    return [str(a) for a in ["--input", inputs, "--output-prefix", prefix, "--tokenizer", tokenizer,
                             "--workers", "1", "--no-progress", "--rewrite", "openai", "--model", "expert",
                             "--guidelines", GUIDELINES, f"--rewrite.openai.base_urls=[{url}]",
                             "--output.shard_size=4", "--rewrite.openai.window=4", *extra]]


def preprocess(capsys, *args) -> tuple[int, str, list[str], float]:
    """The command line in this process (its imports are paid once): exit status, stdout, stderr lines, seconds."""
    from native_megatron.cli.preprocess import main

    capsys.readouterr()
    start = time.monotonic()
    rc = main(arguments(*args))
    seconds = time.monotonic() - start
    out = capsys.readouterr()
    return rc, out.out, out.err.strip().splitlines(), seconds


def test_a_closed_port_fails_in_seconds_with_one_line_and_no_work(tmp_path, sample_corpus, sample_tokenizer):
    prefix = tmp_path / "out" / "x"
    args = arguments(docs(tmp_path, sample_corpus), prefix, sample_tokenizer, f"http://127.0.0.1:{free_port()}/v1")
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    seconds = time.monotonic() - start
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "did not answer GET /models" in lines[0], lines
    assert "Connection refused" in lines[0]
    assert seconds < 15
    assert not Path(f"{prefix}_work").exists()


def test_an_endpoint_lost_mid_run_stops_with_one_line_and_keeps_finished_shards(tmp_path, sample_corpus,
                                                                                  sample_tokenizer, capsys):
    prefix = tmp_path / "x"
    with ExpertServer(close_after=5) as server:
        # One request at a time: the 5 answered are the first 5, so the first shard is finished before
        # the 6th closes the port (with a window, the 6th can close it while the 5th is being answered).
        rc, _, lines, seconds = preprocess(capsys, docs(tmp_path, sample_corpus), prefix, sample_tokenizer,
                                           server.url, "--rewrite.openai.max_retries=3",
                                           "--rewrite.openai.backoff_s=0.2", "--rewrite.openai.window=1")
    assert rc == 3, lines
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) <= 1, warnings                       # not one per request and retry
    assert lines[-1].startswith("error: rewrite stopped: no answer after 3 retries"), lines[-1]
    assert "Connection refused" in lines[-1] and sum(line.startswith("error:") for line in lines) == 1
    assert (Path(f"{prefix}_work") / "rewrite" / "shard-00000.done.json").exists()
    assert seconds < 60


def test_a_run_that_rewrote_too_little_fails_and_a_lower_minimum_reuses_its_shards(tmp_path, sample_corpus,
                                                                                   sample_tokenizer, capsys):
    prefix = tmp_path / "x"
    inputs = docs(tmp_path, sample_corpus, n=8, refuse=range(8))
    with ExpertServer() as server:
        rc, _, lines, _ = preprocess(capsys, inputs, prefix, sample_tokenizer, server.url)
        assert rc == 4, lines
        last = lines[-1]
        found = re.match(r"error: rewritten: 0 of (\d+) documents sent to the rewriter \(0\.0%\), below "
                         r"rewrite\.min_rewritten_fraction=0\.5;", last)
        assert found and int(found.group(1)) > 0, last
        assert "refusal" in last and not Path(f"{prefix}_text_document.bin").exists()
        sent = len(server.requests)
        rc, out, lines, _ = preprocess(capsys, inputs, prefix, sample_tokenizer, server.url,
                                       "--rewrite.min_rewritten_fraction=0")
        assert rc == 0, lines
        assert len(server.requests) == sent                   # the finished shards were reused
    assert out.splitlines()[0] == f"rewritten: 0 of {found.group(1)} documents sent to the rewriter (0.0%)"
    assert Path(f"{prefix}_text_document.bin").exists()


def cfg(tmp_path, sample_tokenizer, backend, model, *overrides):
    base = {"input.paths": [str(tmp_path / "missing.jsonl")], "output.prefix": str(tmp_path / "x"),
            "tokenize.tokenizer": str(sample_tokenizer), "rewrite.backend": backend, "rewrite.model": model,
            "rewrite.guidelines": str(GUIDELINES), "run.progress": False}
    return load_config(AlignedPreprocessConfig, overrides=list(overrides), base=base)


def test_a_server_that_serves_another_model_is_named_before_any_work(tmp_path, sample_tokenizer):
    with ExpertServer(model="expert") as server:
        with pytest.raises(ConfigError, match=r"serves expert, not 'other': pass --model"):
            run_preprocess_aligned(cfg(tmp_path, sample_tokenizer, "openai", "other",
                                       f"--rewrite.openai.base_urls=[{server.url}]"))
    assert not (tmp_path / "x_work").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_a_missing_vllm_is_reported_before_prepare(tmp_path, sample_tokenizer):
    with pytest.raises(ConfigError, match="needs vLLM"):
        run_preprocess_aligned(cfg(tmp_path, sample_tokenizer, "vllm", str(tmp_path)))
    assert not (tmp_path / "x_work").exists()


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_a_missing_model_is_reported_before_prepare(tmp_path, sample_tokenizer, monkeypatch, backend):
    if backend == "vllm":
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())   # as if vLLM were there
    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(ConfigError, match="does not exist" if backend == "vllm" else "no readable config.json"):
        run_preprocess_aligned(cfg(tmp_path, sample_tokenizer, backend,
                                   str(tmp_path / "gone") if backend == "vllm" else str(empty)))
    assert not (tmp_path / "x_work").exists()
