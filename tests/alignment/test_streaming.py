"""The streaming rewrite against servers on 127.0.0.1: it writes byte for byte what the batch path writes,
keeps every attempt in PREFIX_rewrites.jsonl as the contract says, shows moving progress, and a real
SIGKILL in the middle of a shard loses and repeats nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from native_megatron.alignment.pipeline import AlignedPreprocessConfig, run_preprocess_aligned
from native_megatron.alignment.progress import main as array_progress_main
from native_megatron.alignment.validation import CHECKS
from native_megatron.utils.config import load_config
from tests.helpers.engine_sim import SimulatedEngine
from tests.helpers.fakes import PolishingBackend
from tests.helpers.paths import same_bytes
from tests.helpers.rewrite_corpus import marked_corpus, write_jsonl
from tests.helpers.servers import ExpertServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"
ROW_KEYS = ["id", "file", "line", "attempt", "chunks", "text", "finish_reasons", "prompt_tokens",
            "completion_tokens", "checks", "failed_checks", "decision", "backend", "model", "guidelines"]


def cfg(inputs, prefix, tokenizer, *overrides):
    base = {"input.paths": [str(inputs)], "output.prefix": str(prefix), "tokenize.tokenizer": str(tokenizer),
            "run.workers": 1, "run.progress": False, "rewrite.guidelines": str(GUIDELINES),
            "output.shard_size": 5, "dedup.near": False}
    return load_config(AlignedPreprocessConfig, overrides=list(overrides), base=base)


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def without(rows: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


def prepare_and_rewrite(src, prefix, tokenizer, *overrides, backend=None) -> dict:
    """The prepare stage, then the rewrite stage (tokenizing the aligned shards is the data path's, tested
    there)."""
    run_preprocess_aligned(cfg(src, prefix, tokenizer, *overrides, "--run.stage=prepare"))
    return run_preprocess_aligned(cfg(src, prefix, tokenizer, *overrides, "--run.stage=rewrite"), backend=backend)


def test_streaming_writes_what_the_batch_path_writes_and_keeps_every_attempt(tmp_path, sample_tokenizer):
    src = marked_corpus(tmp_path, 14)
    batch = tmp_path / "batch" / "a"
    prepare_and_rewrite(src, batch, sample_tokenizer, "--rewrite.backend=hf", "--rewrite.model=fake",
                        "--rewrite.batch_size=3", backend=PolishingBackend())
    streamed = tmp_path / "streamed" / "a"
    with ExpertServer() as server:
        # A window of 3 documents over 14, and the CPU work in a worker process: answers come back out of
        # order and through the pool, and must still be written in input order.
        prepare_and_rewrite(src, streamed, sample_tokenizer, "--rewrite.backend=openai", "--rewrite.model=expert",
                            f"--rewrite.openai.base_urls=[{server.url}]", "--rewrite.openai.window=3",
                            "--rewrite.client_workers=1")
    work_a, work_b = Path(f"{batch}_work") / "rewrite", Path(f"{streamed}_work") / "rewrite"
    shards = sorted(p.name for p in work_a.glob("shard-?????.jsonl"))
    assert len(shards) == 3
    for shard in shards:
        assert same_bytes(work_a / shard, work_b / shard), shard
        manifest = shard.replace(".jsonl", ".manifest.jsonl")
        assert without(jsonl(work_a / manifest), "backend", "model") == \
            without(jsonl(work_b / manifest), "backend", "model")

    # Every attempt, in input order, the same through both paths; the merged file is the shards' files.
    rows = jsonl(f"{streamed}_rewrites.jsonl")
    assert without(rows, "backend", "model") == without(jsonl(f"{batch}_rewrites.jsonl"), "backend", "model")
    assert Path(f"{streamed}_rewrites.jsonl").read_bytes() == b"".join(
        p.read_bytes() for p in sorted(work_b.glob("shard-*.rewrites.jsonl")))
    assert not list(work_b.glob("*.tmp*")) and not list(work_b.glob(".*"))
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    assert list(by_id) == [f"d{i:02d}" for i in range(14)]
    for doc in by_id.values():
        assert [r["attempt"] for r in doc] == list(range(1, len(doc) + 1))
        assert list(doc[0]) == ROW_KEYS[:5] + ["source"] + ROW_KEYS[5:]
        assert all(list(r) == ROW_KEYS for r in doc[1:])
        for r in doc:
            assert list(r["checks"]) == list(CHECKS[:6]) + ["garbled", "knowledge", "prompt_leak"]
            assert r["failed_checks"] == [k for k, c in r["checks"].items() if not c["passed"]]
            assert r["backend"] == "openai" and r["model"] == "expert"
    ok, refused, truncated, flaky = by_id["d00"], by_id["d03"], by_id["d07"], by_id["d11"]
    assert [r["decision"] for r in ok] == ["accepted"] and "يا غبي" in ok[0]["source"] \
        and "يا غبي" not in ok[0]["text"]
    assert ok[0]["checks"]["length_ratio"]["threshold"] in (0.5, 1.6) and ok[0]["finish_reasons"] == ["stop"]
    assert [r["decision"] for r in refused] == ["retry", "kept_raw"]
    assert refused[1]["checks"]["refusal"] == {"value": True, "threshold": None, "passed": False}
    assert refused[0]["text"].startswith("I'm sorry")     # the rejected rewrite itself is kept
    assert [r["decision"] for r in truncated] == ["retry", "kept_raw"] and truncated[0]["finish_reasons"] == ["length"]
    assert [r["decision"] for r in flaky] == ["retry", "accepted"] and "refusal" in flaky[0]["failed_checks"]
    markers = {m["rewrites_bytes"] for m in map(lambda p: json.loads(p.read_text()), work_b.glob("*.done.json"))}
    assert all(isinstance(b, int) and b > 0 for b in markers)


def sample_docs(tmp_path: Path, sample_corpus, n: int) -> Path:
    texts = [t for t in (json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8"))
             if 400 < len(t) < 1200][:n]
    return write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])


def test_sigkill_mid_shard_then_rerun_loses_and_repeats_nothing(tmp_path, sample_corpus, sample_tokenizer, capsys):
    src = sample_docs(tmp_path, sample_corpus, 10)
    common = ["--rewrite.backend=openai", "--rewrite.model=sim", "--rewrite.openai.window=4",
              "--output.shard_size=2", "--rewrite.progress_interval_s=0.2"]
    with SimulatedEngine(slots=4, step_s=0.004) as engine:
        url = f"--rewrite.openai.base_urls=[{engine.url}]"
        ref = tmp_path / "ref" / "a"
        prepare_and_rewrite(src, ref, sample_tokenizer, *common, url)
        prefix = tmp_path / "killed" / "a"
        work = Path(f"{prefix}_work") / "rewrite"
        log = open(tmp_path / "stderr.txt", "w+", encoding="utf-8")
        command = [sys.executable, str(ROOT / "tools" / "preprocess_aligned.py"), "--input", str(src),
                   "--output-prefix", str(prefix), "--tokenizer", str(sample_tokenizer), "--workers", "1",
                   "--rewrite", "openai", "--model", "sim", "--guidelines", str(GUIDELINES), url,
                   "--dedup.near=false", *common[2:]]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(command, stderr=log, stdout=subprocess.DEVNULL, env=env)
        live: list[Path] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            live = [p for p in work.glob("*shard-*.rewrites.jsonl.tmp-*") if p.stat().st_size > 0]
            if live and list(work.glob("*.done.json")):
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL and live, "the run ended before a shard was in flight"
        # A reader of the running job saw its attempts, row by row (the last line may be cut).
        seen = live[0].read_text(encoding="utf-8").splitlines()
        assert json.loads(seen[0])["attempt"] == 1
        done_before = len(list(work.glob("*.done.json")))
        assert 0 < done_before < 5
        log.seek(0)
        progress = [line for line in log.read().splitlines() if "rewrite: " in line and " docs" in line]
        assert progress and all("output tokens/s" in p and "in flight" in p and "ETA" in p for p in progress)
        # The array's summary sums what each task last reported (here the one killed task).
        assert array_progress_main(["--prefix", str(prefix)]) == 0
        assert re.match(r"rewrite: 1 tasks: \d+/\d+ docs", capsys.readouterr().out)

        # The same command again (its rewrite stage: tokenizing is the data path's): it keeps the finished
        # shards and redoes the one that was in flight.
        rerun = subprocess.run(command + ["--stage", "rewrite"], capture_output=True, text=True, env=env,
                               timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    ref_work = Path(f"{ref}_work") / "rewrite"
    names = sorted(p.name for p in ref_work.glob("shard-?????.*jsonl"))
    assert len(names) == 3 * 5
    for name in names:
        assert same_bytes(ref_work / name, work / name), name
    assert same_bytes(f"{ref}_rewrites.jsonl", f"{prefix}_rewrites.jsonl")
    sent = [r["id"] for name in names if name.endswith(".manifest.jsonl") for r in jsonl(work / name)]
    assert [(r["id"], r["attempt"]) for r in jsonl(f"{prefix}_rewrites.jsonl")] == [(i, 1) for i in sent]
    assert len(sent) >= 8
    assert not list(work.glob("*.tmp-*"))        # the killed writer's file is gone; nothing else is left


def test_each_server_gets_its_window_read_from_the_server_unless_set():
    from native_megatron.utils.openai_client import DEFAULT_WINDOW, OpenAIClient, OpenAIConfig

    with SimulatedEngine(slots=8, step_s=0.002) as a, SimulatedEngine(slots=8, step_s=0.002) as b, \
            ExpertServer() as plain:
        found = OpenAIClient(OpenAIConfig(base_urls=[a.url, plain.url]), "sim")
        assert found.discover_windows() == [8, DEFAULT_WINDOW]     # vLLM's /server_info; none: vLLM's default
        found.close()
        client = OpenAIClient(OpenAIConfig(base_urls=[a.url, b.url], window=2), "sim")
        assert client.discover_windows() == [2, 2]
        docs = [[{"role": "user", "content": f"<document>\n{'كلمة ' * (20 + i)}\n</document>"}] for i in range(24)]
        try:
            answers = [f.result(timeout=60) for f in [client.submit(m, 0.0, 1.0, 512) for m in docs]]
        finally:
            client.close()
        assert [a.finish_reason for a in answers] == ["stop"] * 24
        # Never more than its window on either engine, and both were used.
        for engine in (a, b):
            history = engine.stats()["history"]
            assert history and max(n for _, n in history) <= 2
        assert a.stats()["requests"] + b.stats()["requests"] == 24
