"""Chat SFT of the rewriter in our trainer: the loss mask, packing with attention kept within each
conversation, and the paper's step 2 end to end on a tiny random Qwen2 (seed pairs from the test
expert server, SFT data, SFT from the imported model, export, the exported model rewriting)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from native_megatron.data.sft import (
    PackedSFTDataset,
    build_sft_data,
    end_of_turn_id,
    load_chat_tokenizer,
    tokenize_conversation,
)
from tests.helpers.convert import convert, model_overrides
from tests.helpers.servers import ExpertServer
from tests.helpers.tiny_qwen2 import corpus_texts, make_tiny_qwen2
from tests.helpers.training import ROOT, env, losses, train, valid_losses

GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"
LOSSES = ROOT / "tests" / "helpers" / "sft_losses.py"
MESSAGES = [{"role": "system", "content": "أنت محرر"}, {"role": "user", "content": "أعد صياغة: السلام"},
            {"role": "assistant", "content": "السلام عليكم"}, {"role": "user", "content": "ثانية"},
            {"role": "assistant", "content": "نعم"}]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def short_conversations(n: int) -> list[dict]:
    texts = [t[:40 + 15 * (i % 5)] for i, t in enumerate(corpus_texts()[:n])]
    return [{"id": f"c{i}", "messages": [{"role": "system", "content": "أعد الصياغة"},
                                         {"role": "user", "content": t},
                                         {"role": "assistant", "content": t[::-1]}]} for i, t in enumerate(texts)]


def test_the_loss_mask_covers_the_assistant_turns_and_their_end_token_only(qwen2):
    tok = load_chat_tokenizer(qwen2)
    ids, mask = tokenize_conversation(tok, MESSAGES, end_of_turn_id(tok))

    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    # The tiny template: "<s>{role}\n{content}</s>\n" per message, "<s>assistant\n" as the generation prompt.
    pieces = [("<s>system\nأنت محرر</s>\n<s>user\nأعد صياغة: السلام</s>\n<s>assistant\n", 0),
              ("السلام عليكم", 1), ("</s>", 1), ("\n<s>user\nثانية</s>\n<s>assistant\n", 0), ("نعم", 1), ("</s>", 1),
              ("\n", 0)]
    expected = [(t, m) for text, m in pieces for t in enc(text)]
    assert list(zip(ids.tolist(), mask.tolist())) == expected
    assert tok.decode(ids) == tok.apply_chat_template(MESSAGES, tokenize=False)


def test_packing_keeps_labels_and_attention_within_each_conversation(tmp_path, qwen2):
    data = tmp_path / "sft"
    build_sft_data([write_jsonl(tmp_path / "c.jsonl", short_conversations(12))], str(qwen2), str(data),
                   valid_fraction=0, progress=False)
    ds = PackedSFTDataset(str(data), "train", seq_length=256, num_samples=40, seed=0)
    assert ds.epochs > 1 and ds.per_epoch < ds.conversations and ds.dropped == 0
    assert sorted(np.concatenate(ds.samples[:ds.per_epoch]).tolist()) == list(range(12))  # each once per epoch
    assert [s.tolist() for s in ds.samples[:ds.per_epoch]] != [s.tolist() for s in ds.samples[ds.per_epoch:][:ds.per_epoch]]  # noqa: E501
    for i in range(ds.per_epoch):
        sample, members = ds[i], ds.samples[i]
        for k, conv in enumerate(members):
            at = sample["segment_ids"] == k
            tokens, mask = ds.tokens[int(conv)], ds.masks[int(conv)]
            assert sample["tokens"][at].tolist() == tokens[:-1].tolist()
            assert sample["labels"][at].tolist() == tokens[1:].tolist()
            assert sample["loss_mask"][at].tolist() == mask[1:].tolist()
            assert sample["position_ids"][at].tolist() == list(range(len(tokens) - 1))
        assert not sample["loss_mask"][sample["segment_ids"] == len(members)].any()   # padding
    median = int(np.median(ds.tokens.sequence_lengths))
    assert 0 < PackedSFTDataset(str(data), "train", seq_length=median, num_samples=1, seed=0).dropped < 12


def test_packed_and_unpacked_batches_give_the_same_per_conversation_losses(tmp_path, qwen2):
    """And the measured effect of letting attention cross conversations, which packing must not do."""
    data = tmp_path / "sft"
    build_sft_data([write_jsonl(tmp_path / "c.jsonl", short_conversations(12))], str(qwen2), str(data),
                   valid_fraction=0, progress=False)
    out = tmp_path / "losses.json"
    proc = subprocess.run([sys.executable, str(LOSSES), str(data), "256", str(out), "--model.vocab_size=2000",
                           "--model.num_layers=2", "--model.hidden_size=64", "--model.ffn_hidden_size=160"],
                          capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(out.read_text())
    assert len(got) == 12
    packed, unpacked, crossing = (np.array([v[i] for v in got.values()]) for i in range(3))
    np.testing.assert_allclose(packed, unpacked, rtol=0, atol=1e-5)
    effect = np.abs(crossing - unpacked)
    print(f"attention crossing conversations changes their mean losses by up to {effect.max():.3f} "
          f"(mean {effect.mean():.3f}); packed vs unpacked: {np.abs(packed - unpacked).max():.1e}")
    assert effect.max() > 1e-3


def test_a_line_without_messages_is_a_one_line_error(tmp_path, qwen2, capsys):
    from native_megatron.cli.sft_data import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "text": "no messages"}])
    assert main(["build", "--input", bad, "--tokenizer", str(qwen2), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:1: expected JSON with a 'messages' list " \
        "(as make_seed_pairs export writes it)"


# The published parameter counts; ModelShape leaves out the QKV biases (0.003% of Qwen2.5-3B).
@pytest.mark.parametrize("name, params", [("qwen2.5_3b", 3_085_938_688), ("qwen2.5_7b", 7_615_616_512),
                                          ("llama3_8b", 8_030_261_248)])
def test_the_rewriter_sft_configs_fit_one_node_and_pack_one_row_per_microbatch(name, params):
    from native_megatron.training.config import TrainConfig, validate_for_world
    from native_megatron.training.metrics import ModelShape
    from native_megatron.utils.config import load_config

    c = load_config(TrainConfig, ROOT / "examples" / "configs" / f"rewriter_sft_{name}.yaml",
                    ["--data.sft_dir=null", "--data.mock=true", "--checkpoint.init_from=null"])
    assert validate_for_world(c, 8) * c.parallel.tensor == 8
    assert c.data.pack and c.schedule.micro_batch_size == 1 and c.data.seq_length == 8192    # THD on te
    m = c.model
    assert ModelShape(m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
                      m.vocab_size, tied_embeddings=not m.untie_embeddings).num_params() == pytest.approx(params,
                                                                                                         rel=1e-4)


def seed_docs(tmp_path) -> str:
    texts = [t for t in corpus_texts() if 200 < len(t) < 450][:10]
    return write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": f"{t}\nيا غبي!!! (رقم {i})"}
                                                 for i, t in enumerate(texts)])


def tool(capsys, main, *args) -> str:
    """A command line's ``main`` in this process (its imports are paid once); returns what it printed."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    assert rc == 0, out.out[-2000:] + out.err[-4000:]
    return out.out


@pytest.mark.slow
def test_seed_pairs_sft_export_and_rewrite_end_to_end(tmp_path, qwen2, capsys):
    from native_megatron.cli.preprocess import main as preprocess
    from native_megatron.cli.seed_pairs import main as seed_pairs
    from native_megatron.cli.sft_data import main as sft_data
    from native_megatron.convert.checkpoint import megatron_to_hf

    seed = tmp_path / "seed"
    with ExpertServer() as expert:
        tool(capsys, seed_pairs, "generate", "--input", seed_docs(tmp_path), "--sample", 10, "--model", "expert",
             "--base-url", expert.url, "--guidelines", GUIDELINES, "--out", seed / "pairs.jsonl",
             "--rewrite.batch_size=5")
    tool(capsys, seed_pairs, "export", "--pairs", seed / "pairs.jsonl", "--guidelines", GUIDELINES,
         "--out", seed / "sft.jsonl")
    built = tool(capsys, sft_data, "build", "--input", seed / "sft.jsonl", "--tokenizer", qwen2, "--out",
                 seed / "sft_data", "--valid-fraction", 0.2, "--no-progress")
    assert "valid: 2 conversations" in built, built
    ckpt = tmp_path / "imported"
    convert("hf-to-megatron", "--hf", qwen2, "--out", ckpt, "--precision", "fp32")

    run = tmp_path / "run"
    train(run, 1, *model_overrides(qwen2), "--data.paths=[]", f"--data.sft_dir={seed / 'sft_data'}",
          "--data.tokenizer=", "--data.seq_length=2048", f"--checkpoint.init_from={ckpt}",
          "--schedule.micro_batch_size=1", "--schedule.global_batch_size=2", "--schedule.train_steps=8",
          "--schedule.warmup_steps=1", "--schedule.eval_interval=8", "--schedule.eval_steps=1",
          "--checkpoint.save_interval=0", "--logging.log_interval=1", "--logging.tensorboard=false")
    curve = losses(run)
    assert len(curve) == 8 and curve[8] < curve[1] - 0.5, curve
    assert 8 in valid_losses(run)
    # The checkpoint carries the SFT directory's tokenizer, chat template included, into the export.
    hf_out = megatron_to_hf(str(run / "checkpoints" / "iter_0000008"), str(tmp_path / "rewriter"), dtype="fp32",
                            progress=False)
    assert (hf_out / "chat_template.jinja").read_text() == (qwen2 / "chat_template.jinja").read_text()

    checked = tool(capsys, sft_data, "check", "--data", seed / "sft_data", "--pairs", seed / "pairs.jsonl",
                   "--model", hf_out, "--guidelines", GUIDELINES, "--backend", "hf",
                   "--rewrite.sampling.max_new_tokens=8")
    assert "held-out pass rate 0/2" in checked, checked      # a random model's noise fails the checks
    assert len((seed / "sft_data" / "check.jsonl").read_text().splitlines()) == 2
    tool(capsys, preprocess, "--input", seed_docs(tmp_path), "--output-prefix", tmp_path / "aligned", "--tokenizer",
         hf_out, "--workers", "1", "--no-progress", "--rewrite", "hf", "--model", hf_out, "--guidelines", GUIDELINES,
         "--rewrite.sampling.max_new_tokens=8", "--rewrite.min_rewritten_fraction=0")
    rows = [json.loads(line) for line in (tmp_path / "aligned_manifest.jsonl").read_text().splitlines()]
    assert rows and all(r.get("backend") == "hf" for r in rows if r["status"] != "dropped")
