"""The SFT builder (tools/build_sft_data.py build) on a tiny random Qwen2 made locally: bad conversations and
conversations longer than the sequence are left out and counted by reason (or cut to fit, if asked), a failed
build leaves no .bin without its .idx and the previous build intact, the directory's tokenizer loads as the
same class as the model's and tokenizes alike, and `check` runs on a CPU machine as the recipe writes it."""

from __future__ import annotations

import json

import pytest

from native_megatron.cli.sft_data import main
from native_megatron.data.sft import STATS_FILE, end_of_turn_id, load_chat_tokenizer, tokenize_conversation
from tests.helpers.tiny_qwen2 import corpus_texts, make_tiny_qwen2
from tests.helpers.training import ROOT

# The tiny Qwen2 and transformers' model classes cost about 4 s on 2 cores before the first test.
pytestmark = pytest.mark.slow
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"
SEQ = 128


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


def good(i: int, text: str) -> dict:
    return {"id": f"c{i}", "messages": [{"role": "system", "content": "أعد الصياغة"},
                                        {"role": "user", "content": text[:30]},
                                        {"role": "assistant", "content": text[:30][::-1]}]}


def conversations() -> tuple[list[dict], dict[str, str]]:
    """15 good short conversations, and one of each fault with the reason it is skipped for."""
    rows = [good(i, t) for i, t in enumerate(corpus_texts()[:15])]
    q = {"role": "user", "content": "سؤال"}
    bad = {"no_role": ([q, {"content": "جواب"}], "message_without_role"),
           "empty_answer": ([q, {"role": "assistant", "content": "  "}], "empty_assistant_turn"),
           "int_content": ([q, {"role": "assistant", "content": 123}], "content_not_a_string"),
           "null_content": ([q, {"role": "assistant", "content": None}], "content_not_a_string"),
           "no_answer": ([q], "no_assistant_turn"),
           "odd_role": ([{"role": "narrator", "content": "x"}, q, {"role": "assistant", "content": "y"}],
                        "unknown_role"),
           "long": ([q, {"role": "assistant", "content": "جواب " * 200}],
                    "too_long")}
    rows += [{"id": cid, "messages": m} for cid, (m, _) in bad.items()]
    return rows, {cid: reason for cid, (_, reason) in bad.items()}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_bad_and_long_conversations_are_counted_and_a_failed_build_leaves_the_last_one(tmp_path, qwen2, capsys):
    rows, reasons = conversations()
    src, out = write_jsonl(tmp_path / "sft.jsonl", rows), tmp_path / "sft_data"
    rc, printed, err = run(capsys, "build", "--input", src, "--tokenizer", qwen2, "--out", out, "--seq-length", SEQ,
                           "--valid-fraction", 0.2, "--no-progress")
    assert rc == 0, err
    stats = json.loads((out / STATS_FILE).read_text())
    expected = {r: list(reasons.values()).count(r) for r in set(reasons.values())}
    assert stats["skipped"] == expected and stats["conversations_read"] == 22
    assert "skipped 7 of 22 conversations (content_not_a_string 2, " in printed, printed
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert {s["id"]: s["reason"] for s in skipped} == reasons
    splits = stats["splits"]
    assert splits["train"]["conversations"] + splits["valid"]["conversations"] == 15      # every line accounted for
    assert splits["train"]["length_max"] <= SEQ + 1
    assert splits["valid"]["conversations"] == len((out / "valid_ids.txt").read_text().split()) >= 2

    # truncate instead: the long conversation is cut to seq_length + 1 tokens and kept
    trunc = tmp_path / "truncated"
    rc, printed, err = run(capsys, "build", "--input", src, "--tokenizer", qwen2, "--out", trunc, "--seq-length",
                           SEQ, "--too-long", "truncate", "--valid-fraction", 0, "--no-progress")
    t = json.loads((trunc / STATS_FILE).read_text())
    assert rc == 0 and t["truncated"] == 1 and "too_long" not in t["skipped"], err
    assert t["splits"]["train"]["conversations"] == 16 and t["splits"]["train"]["length_max"] == SEQ + 1
    assert f"truncated 1 conversations to {SEQ + 1} tokens" in printed

    # a build that fails after opening its outputs (nothing left to train on) leaves the previous build whole
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = write_jsonl(tmp_path / "bad.jsonl", [r for r in rows if r["id"] in reasons])
    rc, _, err = run(capsys, "build", "--input", bad, "--tokenizer", qwen2, "--out", out, "--seq-length", SEQ,
                     "--no-progress")
    assert rc == 2 and err.count("\n") == 1 and "no conversation left to train on (7 read, 7 skipped: " in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    fresh = tmp_path / "fresh"
    assert run(capsys, "build", "--input", bad, "--tokenizer", qwen2, "--out", fresh, "--seq-length", SEQ,
               "--no-progress")[0] == 2
    assert not list(fresh.rglob("*.bin")) and not list(fresh.rglob("*.idx"))


def test_the_directory_tokenizer_is_the_models_and_check_runs_on_cpu_by_default(tmp_path, qwen2, capsys):
    from transformers import AutoTokenizer

    from native_megatron.data.tokenizer import load_tokenizer

    rows = [good(i, t) for i, t in enumerate(corpus_texts()[:15])]
    out = tmp_path / "sft_data"
    rc, _, err = run(capsys, "build", "--input", write_jsonl(tmp_path / "sft.jsonl", rows), "--tokenizer", qwen2,
                     "--out", out, "--valid-fraction", 0.1, "--no-progress")
    assert rc == 0, err
    # Without the model's config.json beside it, the copy used to load as TokenizersBackend (the model
    # directory as Qwen2Tokenizer) and split 6 of 15 of these conversations differently.
    model_tok, copy_tok = AutoTokenizer.from_pretrained(qwen2), AutoTokenizer.from_pretrained(out / "tokenizer")
    assert type(copy_tok) is type(model_tok)
    assert json.loads((out / STATS_FILE).read_text())["tokenizer_class"] == type(model_tok).__name__
    for r in rows:
        a = tokenize_conversation(model_tok, r["messages"], end_of_turn_id(model_tok))
        b = tokenize_conversation(load_chat_tokenizer(out / "tokenizer"), r["messages"], end_of_turn_id(copy_tok))
        assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist(), r["id"]
    data_path_tok = load_tokenizer(out / "tokenizer")  # tokenizers without transformers: the trainer's view
    assert data_path_tok.vocab_size == json.loads((out / STATS_FILE).read_text())["vocab_size"]
    text = "السلام عليكم  ورحمة\n\nالله 123"
    assert data_path_tok.encode(text) == model_tok(text, add_special_tokens=False)["input_ids"]

    # The recipe's check step as written (no --backend): vLLM is not installed here, so it checks with hf.
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": r["id"], "raw": r["messages"][1]["content"]} for r in rows])
    check = ["check", "--data", out, "--pairs", pairs, "--model", qwen2, "--guidelines", GUIDELINES]
    rc, printed, err = run(capsys, *check, "--rewrite.sampling.max_new_tokens=2")
    assert rc == 0 and "backend: hf (vLLM is not installed" in printed and "held-out pass rate 0/2" in printed, err
    rc, _, err = run(capsys, *check, "--backend", "vllm")
    assert rc == 2 and err.count("\n") == 1 and "--backend hf" in err, err
