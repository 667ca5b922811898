"""A trained checkpoint carries its tokenizer: it exports and evaluates from any directory, and the HF
export has the tokenizer files, special tokens and generation_config.json that transformers, vLLM
and lm-evaluation-harness need. A broken checkpoint is one line naming it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.training import ROOT, env, random_docs, train, write_dataset

TOKENIZER = ROOT / "examples" / "tokenizer" / "sample_ar.model"
CORPUS = ROOT / "examples" / "data" / "sample_ar.jsonl"


def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def test_sentencepiece_tokenizer_exports_as_an_hf_tokenizer_with_the_same_ids(tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from native_megatron.convert.hf_tokenizer import write_hf_tokenizer

    bos, eos = write_hf_tokenizer(TOKENIZER, tmp_path)
    assert (bos, eos) == (1, 2)
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id) == (1, 2)
    for text in sample_texts():
        ids = sp.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert hf.decode(ids) == sp.decode(ids)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-step run on real token files, its tokenizer given as a path relative to the repository."""
    base = tmp_path_factory.mktemp("portable")
    prefix = write_dataset(base / "data" / "tiny_text_document", random_docs(120, 8000))
    run = base / "run"
    train(run, 1, f"--data.paths=[{prefix}]", f"--data.tokenizer={TOKENIZER.relative_to(ROOT)}",
          "--schedule.train_steps=5", "--schedule.eval_interval=0", "--checkpoint.save_interval=5",
          "--logging.tensorboard=false")
    return run / "checkpoints" / "iter_0000005"


def tool(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env(), timeout=600)


@pytest.mark.slow
def test_a_checkpoint_exports_from_another_directory_and_the_export_serves(trained, tmp_path):
    from transformers import AutoTokenizer, pipeline

    assert (trained / "tokenizer" / "sample_ar.model").is_file()
    saved = (trained / "config.yaml").read_text()
    assert f"tokenizer: {TOKENIZER}" in saved  # absolute in the saved config
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tool("convert_checkpoint.py", "megatron-to-hf", "--ckpt", trained, "--out", "hf", "--dtype", "fp32",
               "--no-progress", cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-3000:]
    hf_dir = elsewhere / "hf"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        assert (hf_dir / name).is_file(), name
    config = json.loads((hf_dir / "config.json").read_text())
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert config["bos_token_id"] == generation["bos_token_id"] == 1
    assert config["eos_token_id"] == generation["eos_token_id"] == 2
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok.eos_token == "</s>"
    generate = pipeline("text-generation", model=str(hf_dir), device="cpu")
    text = generate("السلام عليكم", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("السلام عليكم")


@pytest.mark.slow
def test_a_broken_checkpoint_is_one_line_naming_it_in_convert_and_evaluate(trained, tmp_path):
    broken = tmp_path / "iter_0000005"
    shutil.copytree(trained, broken)
    with open(broken / "__0_0.distcp", "r+b") as f:
        f.truncate(1000)
    out = tool("convert_checkpoint.py", "megatron-to-hf", "--ckpt", broken, "--out", tmp_path / "hf", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (f"error: checkpoint {broken} cannot be loaded: __0_0.distcp is "
                                                   f"truncated (1,000 of {(trained / '__0_0.distcp').stat().st_size:,} "
                                                   f"bytes)")
    assert "Traceback" not in out.stderr
    out = tool("evaluate.py", "--model", f"x={broken}", "--out", tmp_path / "eval", "--no-progress", cwd=ROOT)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(broken) in out.stderr.strip().splitlines()[-1] and "truncated" in out.stderr.strip().splitlines()[-1]
