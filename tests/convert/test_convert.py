"""HF Llama <-> megatron-core checkpoints, with a tiny random LlamaForCausalLM (GQA, untied, a
vocabulary that needs padding, sharded safetensors): imported at TP=1/PP=1 and TP=2/PP=2, the
Megatron model's logits match HF's (fp32, 1e-4); the round trip gives identical tensors;
continued pre-training runs from the import; a trained checkpoint exports, loads in transformers,
and gives the Megatron loss."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers.convert import TOOL, convert, megatron_logits, model_overrides
from tests.helpers.training import MOCK_TINY, ROOT, env, losses, train

pytestmark = pytest.mark.slow
VOCAB = 300


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():        # random norms too, so a swapped norm cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model.save_pretrained(path, max_shard_size="100KB", safe_serialization=True)
    assert (path / "model.safetensors.index.json").exists()
    return path, model


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 2)])
def test_import_gives_hf_logits(tmp_path, hf_model, tp, pp):
    hf_dir, model = hf_model
    ckpt = tmp_path / "ckpt"
    convert("hf-to-megatron", "--hf", str(hf_dir), "--out", str(ckpt), "--tp", str(tp), "--pp", str(pp),
            "--precision", "fp32", nproc=tp * pp)
    ids = batch()
    with torch.no_grad():
        expected = model(ids).logits
    got = megatron_logits(ckpt, hf_dir, ids, tmp_path)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


# One process writes any layout (the README's single-process command with --tp/--pp used to fail with
# "world size 1 is not divisible"); the checkpoint reshards on load. Without --precision/--dtype the fp32
# model stays fp32 both ways (both defaulted to bf16: logits off by 0.0028), and the export's config.json
# keeps the model's bos/eos/pad ids (pad and, with no tokenizer, bos were dropped).
@pytest.mark.parametrize("layout", [[], ["--tp", "2", "--pp", "2"]], ids=["default", "tp2pp2_one_process"])
def test_round_trip_is_exact(tmp_path, hf_model, layout):
    from safetensors.torch import load_file

    hf_dir, model = hf_model
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    dtypes = ([], []) if not layout else (["--precision", "fp32"], ["--dtype", "fp32"])
    convert("hf-to-megatron", "--hf", str(hf_dir), "--out", str(ckpt), *dtypes[0], *layout)
    record = json.loads((ckpt / "hf_model.json").read_text())
    assert (record["dtype"], record["source_dtype"], record["pad_token_id"]) == ("fp32", "fp32", 0)
    convert("megatron-to-hf", "--ckpt", str(ckpt), "--out", str(back), *dtypes[1])
    got = {}
    for f in back.glob("*.safetensors"):
        got.update(load_file(f))
    ref = model.state_dict()
    assert sorted(got) == sorted(k for k in ref if "rotary" not in k)
    for k, v in got.items():
        assert torch.equal(v, ref[k]), k
    config = json.loads((back / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["torch_dtype"] == "float32"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)


def test_continued_pretraining_then_export_loads_in_transformers(tmp_path, hf_model):
    from transformers import AutoModelForCausalLM

    hf_dir, _ = hf_model
    ckpt = tmp_path / "imported"
    convert("hf-to-megatron", "--hf", str(hf_dir), "--out", str(ckpt), "--tp", "2", "--pp", "2",
            "--precision", "fp32", nproc=4)
    run = tmp_path / "run"
    mock = [a for a in MOCK_TINY if not a.startswith("--model.vocab_size")]
    train(run, 4, *mock, *model_overrides(hf_dir), "--schedule.train_steps=3", "--parallel.tensor=2",
          "--parallel.pipeline=2", f"--checkpoint.init_from={ckpt}", "--checkpoint.save_interval=3",
          "--data.seq_length=16")
    assert len(losses(run)) == 3
    trained = run / "checkpoints" / "iter_0000003"
    hf_out = tmp_path / "exported"
    convert("megatron-to-hf", "--ckpt", str(trained), "--out", str(hf_out), "--dtype", "fp32",
            "--vocab-size", str(VOCAB))
    exported = AutoModelForCausalLM.from_pretrained(hf_out, dtype=torch.float32).eval()
    ids = batch()
    with torch.no_grad():
        hf_out_logits = exported(ids).logits
        hf_loss = torch.nn.functional.cross_entropy(hf_out_logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    meg = megatron_logits(trained, hf_dir, ids, tmp_path)
    meg_loss = torch.nn.functional.cross_entropy(meg[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert abs(hf_loss.item() - meg_loss.item()) < 1e-4


def test_the_help_says_what_precision_an_import_gets():
    from native_megatron.cli.convert import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    assert "default auto: the HF model's own" in " ".join(sub["hf-to-megatron"].format_help().split())
    assert "default auto: as the checkpoint stores them" in " ".join(sub["megatron-to-hf"].format_help().split())


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"],
                                                      "model_type": "mistral"}))
    out = subprocess.run([sys.executable, str(TOOL), "hf-to-megatron", "--hf", str(tmp_path), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, env=env(), cwd=ROOT)
    assert out.returncode == 2 and "MistralForCausalLM" in out.stderr and "not supported" in out.stderr
