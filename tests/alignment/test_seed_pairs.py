"""tools/make_seed_pairs.py end to end: a sample of documents rewritten by an "expert" behind an
OpenAI-compatible API, an interrupted run continued, and the pairs exported as chat SFT data whose
prompt is exactly what the rewriting stage sends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from native_megatron.alignment.guidelines import load_guidelines
from tests.helpers.servers import ExpertServer

ROOT = Path(__file__).resolve().parents[2]
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"
TOOL = [sys.executable, str(ROOT / "tools" / "make_seed_pairs.py")]


def docs(tmp_path, sample_corpus) -> Path:
    texts = [t for t in (json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8"))
             if 400 < len(t) < 1500][:12]
    rows = [{"id": f"d{i}", "text": f"{t}\nيا غبي!!! ({'REFUSE' if i in (2, 7) else 'رقم'} {i})"}
            for i, t in enumerate(texts)]
    rows.append({"id": "bad", "text": 5})                      # not text: skipped, never sampled
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def generate(inp, out, url, sample=10):
    return run("generate", "--input", str(inp), "--sample", str(sample), "--seed", "3", "--model", "expert",
               "--base-url", url, "--guidelines", str(GUIDELINES), "--out", str(out),
               "--rewrite.openai.max_retries=1", "--rewrite.openai.backoff_s=0.01", "--rewrite.batch_size=4")


def test_generate_continue_and_export(tmp_path, sample_corpus):
    inp, pairs, sft = docs(tmp_path, sample_corpus), tmp_path / "seed" / "pairs.jsonl", tmp_path / "seed" / "sft.jsonl"
    with ExpertServer(fail_after=5) as dying:                  # goes away part way through
        proc = generate(inp, pairs, dying.url)
    assert proc.returncode == 3 and "rerun to continue" in proc.stderr
    partial = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    assert 0 < len(partial) < 10

    with ExpertServer() as expert:
        proc = generate(inp, pairs, expert.url)
        assert proc.returncode == 0, proc.stderr
        assert f"{len(partial)} already there" in proc.stdout
        # Only the documents not yet paired were sent again.
        sent = {"d" + m for r in expert.requests for m in re.findall(r"\((?:رقم|REFUSE) (\d+)\)",
                                                                      r["messages"][-1]["content"])}
        assert sent and not sent & {p["id"] for p in partial}
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 10 and "bad" not in ids
    # Same seed, same sample: the rerun picked the same 10 documents.
    assert {r["id"] for r in partial} <= set(ids)
    passed = [r for r in rows if r["rewritten"] is not None]
    failed = [r for r in rows if r["rewritten"] is None]
    assert all("يا غبي" not in r["rewritten"] and "يا غبي" in r["raw"] for r in passed)
    assert all("REFUSE" in r["raw"] and r["failed_checks"] for r in failed)
    assert all(r["model"] == "expert" and r["guidelines"].startswith("native-alignment@") for r in rows)

    proc = run("export", "--pairs", str(pairs), "--guidelines", str(GUIDELINES), "--out", str(sft))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in sft.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in passed]
    guidelines = load_guidelines(str(GUIDELINES))
    for rec, pair in zip(records, passed):
        assert rec["messages"][:-1] == guidelines.messages(pair["raw"])
        assert rec["messages"][-1] == {"role": "assistant", "content": pair["rewritten"]}


def test_bad_input_is_a_one_line_error(tmp_path):
    proc = run("generate", "--input", str(tmp_path / "missing.jsonl"), "--model", "m", "--guidelines",
               str(GUIDELINES), "--out", str(tmp_path / "p.jsonl"))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: input not found")


def test_generate_reads_its_settings_from_a_yaml_file(tmp_path):
    import yaml

    path = tmp_path / "seed.yaml"
    path.write_text(f"rewrite:\n  model: expert\n  guidelines: {GUIDELINES}\n  on_failure: keep_raw\n"
                    f"validate:\n  min_length_ratio: 0.3\n", encoding="utf-8")
    proc = run("generate", "--input", "x.jsonl", "--out", str(tmp_path / "p.jsonl"), "--config", str(path),
               "--rewrite.batch_size=3", "--print-config")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    # generate's defaults (openai, its default URL) under the file; the file and the overrides over them.
    assert cfg["rewrite"]["backend"] == "openai" and cfg["rewrite"]["model"] == "expert"
    assert cfg["rewrite"]["on_failure"] == "keep_raw" and cfg["rewrite"]["batch_size"] == 3
    assert cfg["rewrite"]["openai"]["base_urls"] == ["http://127.0.0.1:8000/v1"]
    assert cfg["validate"]["min_length_ratio"] == 0.3
