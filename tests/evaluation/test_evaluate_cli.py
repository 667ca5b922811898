"""End to end: the sample corpus -> a tiny model trained by pretrain_arabic.py -> exported -> evaluated.

The trained checkpoint and a tiny HF model are compared on every sample task
(examples/eval/) and on the alignment prompts judged over HTTP; the report,
its JSON and its plot are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from native_megatron.evaluation.tasks import READERS, load_task
from tests.helpers.judge_server import JudgeServer
from tests.helpers.paths import ROOT, SAMPLE_CORPUS, SAMPLE_TOKENIZER

EVAL = ROOT / "tools" / "evaluate.py"
SAMPLES = ROOT / "examples" / "eval"
pytestmark = pytest.mark.slow


def run(*args, timeout=600, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The demo's path at toy size: raw sample -> .bin/.idx -> a few steps of the tiny CPU config."""
    tmp = tmp_path_factory.mktemp("demo")
    prefix = tmp / "data" / "sample_ar"
    out = run(ROOT / "tools" / "preprocess_aligned.py", "--rewrite", "none", "--no-progress", "--input",
              SAMPLE_CORPUS, "--tokenizer", SAMPLE_TOKENIZER, "--output-prefix", prefix)
    assert out.returncode == 0, out.stderr[-3000:]
    out = run(ROOT / "pretrain_arabic.py", "--config", ROOT / "examples" / "configs" / "tiny_cpu.yaml",
              f"--data.paths=[{prefix}_text_document]", "--schedule.train_steps=6", "--schedule.eval_interval=0",
              f"--logging.run_dir={tmp / 'run'}", "--logging.tensorboard=false")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run"


def test_trained_checkpoint_is_exported_and_compared_on_every_sample_task(trained, tiny_hf, tmp_path):
    out_dir = tmp_path / "eval"
    with JudgeServer() as judge:
        out = run(EVAL, "--model", f"demo={trained}/checkpoints", f"tiny_hf={tiny_hf}", "--out", out_dir,
                  "--shots", "1", "--judge", "openai", "--judge-model", "judge", "--judge-url", judge.url,
                  "--max-new-tokens", "8", "--no-progress", "--log-samples", "--judge-check",
                  SAMPLES / "alignment" / "judge_check.jsonl")
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert results["models"] == ["demo", "tiny_hf"]
    expected_n = {task: len(load_task(task, SAMPLES / task).test) for task in READERS}
    got = {(r["model"], r["task"]): r for r in results["tasks"]}
    for model in ("demo", "tiny_hf"):
        for task, n in expected_n.items():
            r = got[(model, task)]
            assert r["n"] == n and 0 <= r["acc"] <= 1 and 0 <= r["acc_norm"] <= 1 and r["protocol"] == "oall"
            assert r["shots"] == (0 if task == "aratrust" else 1)  # AraTrust has no few-shot split
            # --log-samples: every item, each choice's numbers, the picks that make the score.
            rows = [json.loads(x) for x in (out_dir / "samples" / model / f"{task}.jsonl").read_text(
                encoding="utf-8").splitlines()]
            assert len(rows) == n and all(len(x["choices"]) >= 2 and x["protocol"] == "oall" for x in rows)
            assert {"loglik", "tokens", "chars", "bytes", "loglik_per_char"} <= set(rows[0]["choices"][0])
            assert sum(x["correct"]["acc_norm"] for x in rows) == round(r["acc_norm"] * n)
            # The tiny HF model has a chat template, so oall scores it the way lighteval does by default.
            assert all(x["chat_template"] == (model == "tiny_hf") for x in rows) and r["chat_template"] == (
                model == "tiny_hf")
            assert r["majority"] >= r["chance"]
    prompts = (SAMPLES / "alignment" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    for s in results["alignment"]:
        assert s["n"] == len(prompts) and s["judged"] == len(prompts) and s["judge"] == "openai:judge"
        answers = (out_dir / "answers" / f"{s['model']}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(answers) == len(prompts)
        logged = [json.loads(x) for x in (out_dir / "samples" / s["model"] / "alignment.jsonl").read_text(
            encoding="utf-8").splitlines()]
        assert len(logged) == len(prompts) and all(x["verdict"] in ("safe", "unsafe") for x in logged)
    # The checkpoint went through the converter; the report is printed and written.
    assert (out_dir / "exported" / "demo" / "config.json").is_file()
    assert "| arabic_mmlu | oall | plain / chat template | acc_norm | 1 |" in out.stdout and "report:" in out.stdout
    assert "format check only, not a benchmark" in out.stdout  # the samples are never read as a result
    assert results["judge_check"]["judged"] == 40 and results["judge_check"]["trusted"]
    assert (out_dir / "report.png").read_bytes()[:4] == b"\x89PNG"

    # A second run, from outside the repository (the default samples are still found and labelled), reuses
    # the export; the chat model is scored on plain text this time, and ArabicMMLU under the paper's protocol:
    # other prompts, each labelled.
    chat_rows = (out_dir / "samples" / "tiny_hf" / "acva.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    stamp = out_dir / "exported" / "demo" / "exported_from.txt"
    before = stamp.stat().st_mtime_ns
    again = run(EVAL, "--model", f"demo={trained}/checkpoints", f"tiny_hf={tiny_hf}", "--out", out_dir, "--tasks",
                "arabic_mmlu,acva", "--protocol", "arabicmmlu", "--chat-template", "off", "--log-samples", "--limit",
                "4", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "format check only, not a benchmark" in again.stdout
    assert stamp.stat().st_mtime_ns == before
    plain = {t: [json.loads(x) for x in (out_dir / "samples" / "tiny_hf" / f"{t}.jsonl").read_text(
        encoding="utf-8").splitlines()] for t in ("arabic_mmlu", "acva")}
    assert [x["protocol"] for x in plain["arabic_mmlu"]] == ["arabicmmlu"] * 4
    assert not any(x["chat_template"] for rows in plain.values() for x in rows)
    for chat_row, plain_row in zip(map(json.loads, chat_rows), plain["acva"]):
        assert chat_row["chat_template"] and chat_row["id"] == plain_row["id"]
        assert chat_row["prompt"] != plain_row["prompt"] and plain_row["prompt"] in chat_row["prompt"]
    assert "| acva | oall | plain | acc_norm | 0 | 4 |" in again.stdout


def test_missing_task_files_are_named_before_any_model_loads(tmp_path, tiny_hf):
    out = run(EVAL, "--model", tiny_hf, "--tasks", "arabic_mmlu", "--data-dir", tmp_path, "--out", tmp_path / "o")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: arabic_mmlu: directory")
    (tmp_path / "arabic_mmlu").mkdir()
    out = run(EVAL, "--model", tiny_hf, "--tasks", "arabic_mmlu", "--data-dir", tmp_path, "--out", tmp_path / "o")
    assert out.returncode == 2 and "expected SUBJECT/test.csv and SUBJECT/dev.csv" in out.stderr
    out = run(EVAL, "--model", tmp_path / "nothing", "--tasks", "acva", "--out", tmp_path / "o")
    assert out.returncode == 2 and "not found" in out.stderr


def test_a_copy_of_the_samples_is_still_labelled_a_format_check(tmp_path):
    """An installed package's user passes a copy with --data-dir: the marker travels with it."""
    import shutil

    from native_megatron.evaluation.run import describe_data

    copy = tmp_path / "my_samples"
    shutil.copytree(SAMPLES, copy)
    assert describe_data(copy / "acva", load_task("acva", copy / "acva"))["kind"] == "sample"
    assert describe_data(tmp_path / "o", None, 3)["kind"] == "data"
