"""HF Qwen2 (Qwen1.5/2/2.5) <-> megatron-core checkpoints, with a tiny random Qwen2ForCausalLM (QKV biases,
random and non-zero so a dropped bias cannot pass; tied embeddings; RoPE base 1e6; a chat tokenizer whose
template transformers saved as chat_template.jinja): imported at TP=1/PP=1 and TP=2/PP=2 the logits match
HF's (fp32, 1e-4); the TP=2/PP=2 import exports back to identical tensors and a Qwen2 config.json; a
checkpoint trained from the import exports to a directory that transformers and our hf rewriter load, chat
template included."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.convert import convert, megatron_logits, model_overrides
from tests.helpers.training import MOCK_TINY, ROOT, losses, random_docs, train, write_dataset

CORPUS = ROOT / "examples" / "data" / "sample_ar.jsonl"
GUIDELINES = ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"
VOCAB = 300
MESSAGES = [{"role": "user", "content": "أعد صياغة: السلام عليكم"}]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    import shutil

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from native_megatron.alignment.tiny_model import make_tiny_chat_model

    base = tmp_path_factory.mktemp("qwen2")
    texts = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    chat = make_tiny_chat_model(base / "chat", texts, vocab_size=VOCAB)  # for its tokenizer and chat template
    path = base / "tiny-qwen2"
    path.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(chat / name, path / name)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=3)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms and biases, so a swapped norm or a dropped bias cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(path, max_shard_size="100KB", safe_serialization=True)
    return path, model


@pytest.fixture(scope="module")
def imported(hf_model, tmp_path_factory):
    """imported(tp, pp): the HF model converted at that layout (once per layout for the module)."""
    done = {}

    def get(tp: int, pp: int):
        if (tp, pp) not in done:
            out = tmp_path_factory.mktemp(f"imported_tp{tp}_pp{pp}") / "ckpt"
            convert("hf-to-megatron", "--hf", hf_model[0], "--out", out, "--tp", tp, "--pp", pp, "--precision",
                    "fp32", nproc=tp * pp)
            done[tp, pp] = out
        return done[tp, pp]

    return get


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))


def export(ckpt, out):
    """megatron-to-hf in this process (the command line is tested with Llama), fp32."""
    from native_megatron.convert.checkpoint import megatron_to_hf

    return megatron_to_hf(str(ckpt), str(out), dtype="fp32", progress=False)


def hf_tensors(hf_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    got = {}
    for f in hf_dir.glob("*.safetensors"):
        got.update(load_file(f))
    return got


@pytest.mark.slow
@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 2)])
def test_import_gives_hf_logits(tmp_path, hf_model, imported, tp, pp):
    hf_dir, model = hf_model
    ckpt = imported(tp, pp)
    assert json.loads((ckpt / "hf_model.json").read_text())["family"] == "qwen2"
    if (tp, pp) == (1, 1):  # the import's tokenizer loads and splits as the model's (it loaded as TokenizersBackend)
        from transformers import AutoTokenizer

        from native_megatron.data.tokenizer import load_tokenizer

        ours, theirs = AutoTokenizer.from_pretrained(ckpt / "tokenizer"), AutoTokenizer.from_pretrained(hf_dir)
        text = "السلام عليكم 123"
        assert type(ours) is type(theirs)
        assert load_tokenizer(ckpt / "tokenizer").encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    ids = batch()
    with torch.no_grad():
        expected = model(ids).logits
    got = megatron_logits(ckpt, hf_dir, ids, tmp_path)
    print(f"TP={tp} PP={pp}: max |megatron - HF| = {(got - expected).abs().max().item():.2e}")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_export_of_the_tp2_pp2_import_is_exact_and_a_qwen2_model(tmp_path, hf_model, imported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    hf_dir, model = hf_model
    out = export(imported(2, 2), tmp_path / "back")
    got, ref = hf_tensors(out), model.state_dict()
    # tied: no lm_head.weight, the last pipeline stage's copy of the embedding is not written twice
    assert sorted(got) == sorted(k for k in ref if "rotary" not in k and k != "lm_head.weight")
    for k, v in got.items():
        assert torch.equal(v, ref[k]), k
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("qwen2", ["Qwen2ForCausalLM"])
    assert config["tie_word_embeddings"] and config["rope_theta"] == 1e6 and config["vocab_size"] == VOCAB
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert isinstance(exported, Qwen2ForCausalLM)
    ids = batch()
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, model(ids).logits)
    assert AutoTokenizer.from_pretrained(out).chat_template == (hf_dir / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_a_trained_checkpoint_exports_to_a_model_the_hf_rewriter_serves(tmp_path, hf_model, imported):
    """Train from the import on token files made with its tokenizer; the export (no --tokenizer, no
    --vocab-size) is the directory that ``--rewrite hf --model DIR`` and ``vllm serve DIR`` take."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from native_megatron.alignment.backends import build_backend
    from native_megatron.alignment.config import RewriteConfig, SamplingConfig
    from native_megatron.alignment.guidelines import load_guidelines

    hf_dir, _ = hf_model
    ckpt = imported(1, 1)
    prefix = write_dataset(tmp_path / "data" / "sft_text_document", random_docs(40, VOCAB))
    run = tmp_path / "run"
    mock = [a for a in MOCK_TINY if not a.startswith(("--data.mock", "--data.paths", "--model.vocab_size"))]
    train(run, 1, *mock, *model_overrides(hf_dir), f"--data.paths=[{prefix}]", f"--data.tokenizer={ckpt}/tokenizer",
          "--model.make_vocab_size_divisible_by=128", "--schedule.train_steps=2", f"--checkpoint.init_from={ckpt}",
          "--checkpoint.save_interval=2", "--data.seq_length=16")
    assert len(losses(run)) == 2
    out = export(run / "checkpoints" / "iter_0000002", tmp_path / "exported")

    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == \
        ("qwen2", 1, 2, 3)
    AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == f"<s>user\n{MESSAGES[0]['content']}</s>\n<s>assistant\n"
    rewriter = build_backend(RewriteConfig(backend="hf", model=str(out), guidelines=str(GUIDELINES)))
    request = load_guidelines(GUIDELINES).messages("السلام عليكم ورحمة الله")
    (gen,) = rewriter.generate([request], SamplingConfig(temperature=0.0, max_new_tokens=4))
    assert gen.completion_tokens > 0 and gen.prompt_tokens > 0
