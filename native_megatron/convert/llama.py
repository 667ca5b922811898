"""HF Llama-family (Llama, Qwen2) <-> megatron-core GPTModel weights.

Qwen1.5, Qwen2 and Qwen2.5 (``model_type: qwen2``) are Llama with biases on the query, key and
value projections (megatron-core's ``add_qkv_bias``), usually RoPE base 1e6 and, on small sizes,
tied embeddings. Sliding-window attention and other Qwen variants (MoE, Qwen3's q/k norms) are
refused.

Megatron's layout, per layer (global, i.e. as a TP=1 model holds it, which is also how
dist_checkpointing stores it whatever the layout it was saved at):

- ``linear_qkv.weight``: [(nq + 2 nkv) * hd, H], grouped by key/value head: for each group g,
  the nq/nkv query heads of g, then k_g, then v_g (tensor parallelism splits whole groups);
  ``linear_qkv.bias`` (Qwen2) is grouped the same way;
- ``linear_fc1.weight``: [2F, H] = [gate; up] (under TP each rank holds [gate_r; up_r]);
- embeddings and output layer padded to the training vocabulary (padded rows are zero); with
  tied embeddings the checkpoint holds the embedding only (megatron-core saves the last pipeline
  stage's copy under the embedding's key).

HF's q/k weights are already in the rotate-half order Megatron's non-interleaved RoPE uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from native_megatron.utils.config import ConfigError

# model_type -> architecture; the family is recorded with the import and decides the export's config.json.
FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    rope_theta: float
    rope_scaling: bool
    eps: float
    tied: bool
    family: str = "llama"   # a key of FAMILIES; import records written before Qwen2 support lack it

    @property
    def qkv_bias(self) -> bool:
        return self.family == "qwen2"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def model_overrides(self) -> dict:
        """Our ModelConfig for this model (the training config's ``model`` section)."""
        return {"model.num_layers": self.layers, "model.hidden_size": self.hidden, "model.ffn_hidden_size": self.ffn,
                "model.num_attention_heads": self.heads, "model.num_query_groups": self.kv_heads,
                "model.vocab_size": self.vocab, "model.max_position_embeddings": self.max_positions,
                "model.rotary_base": self.rope_theta, "model.rope_scaling": self.rope_scaling,
                "model.norm_epsilon": self.eps, "model.untie_embeddings": not self.tied,
                "model.add_qkv_bias": self.qkv_bias}


def _rope(hf_dir, c: dict, family: str) -> tuple[float, bool]:
    """(RoPE base, Llama-3.1 scaling on?) from config.json, as transformers 4 (``rope_theta``,
    ``rope_scaling``) or 5 (``rope_parameters``) writes it."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or None
    if scaling is None and (params.get("rope_type") or params.get("type")) not in (None, "default"):
        scaling = params
    if scaling is not None:
        kind = scaling.get("rope_type") or scaling.get("type")
        if family != "llama" or kind != "llama3" or float(scaling.get("factor", 8.0)) != 8.0:
            raise ConfigError(f"{hf_dir}: rope scaling {scaling} is not supported (only Llama-3.1's llama3, "
                              f"factor 8)")
    return float(c.get("rope_theta", params.get("rope_theta", 10000.0))), scaling is not None


def read_hf_config(hf_dir: str | Path) -> LlamaShape:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise ConfigError(f"{hf_dir}: no config.json (expected a Hugging Face model directory)")
    c = json.loads(path.read_text())
    arch, family = (c.get("architectures") or ["?"])[0], c.get("model_type")
    if FAMILIES.get(family) != arch:
        raise ConfigError(f"{hf_dir}: architecture {arch} (model_type {family}) is not supported; "
                          f"supported: {', '.join(sorted(FAMILIES.values()))}")
    heads = c["num_attention_heads"]
    if c.get("head_dim") not in (None, c["hidden_size"] // heads):
        raise ConfigError(f"{hf_dir}: head_dim {c['head_dim']} != hidden_size / num_attention_heads is not supported")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ConfigError(f"{hf_dir}: biases in attention or MLP are not supported (Llama has none)")
    if c.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{hf_dir}: hidden_act {c['hidden_act']} is not supported (only silu)")
    if c.get("use_sliding_window") or any(t != "full_attention" for t in c.get("layer_types") or []):
        raise ConfigError(f"{hf_dir}: sliding-window attention is not supported (use_sliding_window / "
                          f"layer_types); only models with full attention in every layer convert")
    theta, scaling = _rope(hf_dir, c, family)
    return LlamaShape(layers=c["num_hidden_layers"], hidden=c["hidden_size"], ffn=c["intermediate_size"], heads=heads,
                      kv_heads=c.get("num_key_value_heads") or heads, vocab=c["vocab_size"],
                      max_positions=c.get("max_position_embeddings", 8192), rope_theta=theta,
                      rope_scaling=scaling, eps=float(c.get("rms_norm_eps", 1e-5)),
                      tied=bool(c.get("tie_word_embeddings", False)), family=family)


# config.json's dtype names (transformers 5 writes "dtype", 4 "torch_dtype"; safetensors "BF16"...) -> ours.
PRECISIONS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "BF16": "bf16", "F16": "fp16", "F32": "fp32"}


def hf_precision(hf_dir: str | Path) -> str:
    """The HF model's own weight dtype as bf16/fp16/fp32: config.json's ``dtype`` (``torch_dtype``),
    else the dtype its first stored tensor has."""
    c = json.loads((Path(hf_dir) / "config.json").read_text())
    name = c.get("dtype") or c.get("torch_dtype")
    if name is None:
        from safetensors import safe_open

        hf = HFWeights(hf_dir)
        first = next(iter(hf.weight_map))
        with safe_open(hf.dir / hf.weight_map[first], framework="pt") as f:
            name = f.get_slice(first).get_dtype()
    if name not in PRECISIONS:
        raise ConfigError(f"{hf_dir}: weights in {name} cannot be imported as they are; pass --precision "
                          f"bf16, fp16 or fp32")
    return PRECISIONS[name]


def hf_special_tokens(hf_dir: str | Path) -> dict:
    """config.json's bos/eos/pad token ids (None where it names none): an export writes them back."""
    c = json.loads((Path(hf_dir) / "config.json").read_text())
    return {k: c.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def hf_config_dict(shape: LlamaShape, dtype: torch.dtype, bos_id: int | None = None, eos_id: int | None = None,
                   pad_id: int | None = None) -> dict:
    cfg = {"architectures": [FAMILIES[shape.family]], "model_type": shape.family, "vocab_size": shape.vocab,
           "hidden_size": shape.hidden, "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers,
           "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim,
           "max_position_embeddings": shape.max_positions, "rms_norm_eps": shape.eps, "rope_theta": shape.rope_theta,
           "hidden_act": "silu", "tie_word_embeddings": shape.tied, "torch_dtype": str(dtype).removeprefix("torch."),
           "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if shape.family == "qwen2":  # q/k/v biases are implied by the architecture; o_proj and the MLP have none
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=shape.layers,
                   attention_dropout=0.0)
    else:
        cfg.update(attention_bias=False, mlp_bias=False)
    if shape.rope_scaling:
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}
    return cfg


# ---------------------------------------------------------------- HF tensors, streamed
class HFWeights:
    """Tensors of an HF checkpoint (safetensors, sharded or not), read one at a time."""

    def __init__(self, hf_dir: str | Path) -> None:
        from safetensors import safe_open

        d = Path(hf_dir)
        index = d / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (d / "model.safetensors").exists():
            with safe_open(d / "model.safetensors", framework="pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise ConfigError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json (PyTorch .bin "
                              f"checkpoints are not supported; re-save with safe_serialization=True)")
        self.dir, self.weight_map = d, weight_map

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.weight_map:
            raise ConfigError(f"{self.dir}: tensor {name} is missing")
        with safe_open(self.dir / self.weight_map[name], framework="pt") as f:
            return f.get_tensor(name)


def _check(name: str, t: torch.Tensor, shape: tuple) -> torch.Tensor:
    if tuple(t.shape) != tuple(shape):
        raise ConfigError(f"tensor {name}: shape {tuple(t.shape)}, expected {tuple(shape)} from config.json")
    return t


def pad_vocab(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] > rows:
        raise ConfigError(f"vocabulary {t.shape[0]} is larger than the model's padded vocabulary {rows}")
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])]) if t.shape[0] < rows else t


def megatron_global(hf: HFWeights, s: LlamaShape, name: str, layer: int | None, padded_vocab: int) -> torch.Tensor:
    """The global (TP=1) Megatron tensor for a parameter, from HF tensors."""
    H, F, hd = s.hidden, s.ffn, s.head_dim
    if name == "embedding.word_embeddings.weight":
        return pad_vocab(_check("model.embed_tokens.weight", hf.get("model.embed_tokens.weight"), (s.vocab, H)),
                         padded_vocab)
    if name == "output_layer.weight":
        key = "model.embed_tokens.weight" if s.tied else "lm_head.weight"
        return pad_vocab(_check(key, hf.get(key), (s.vocab, H)), padded_vocab)
    if name == "decoder.final_layernorm.weight":
        return _check("model.norm.weight", hf.get("model.norm.weight"), (H,))
    p = f"model.layers.{layer}."
    if name.endswith("input_layernorm.weight"):
        return _check(p + "input_layernorm.weight", hf.get(p + "input_layernorm.weight"), (H,))
    if name.endswith("pre_mlp_layernorm.weight"):
        return _check(p + "post_attention_layernorm.weight", hf.get(p + "post_attention_layernorm.weight"), (H,))
    if name.endswith("self_attention.linear_qkv.weight"):
        q = _check(p + "self_attn.q_proj.weight", hf.get(p + "self_attn.q_proj.weight"), (s.heads * hd, H))
        k = _check(p + "self_attn.k_proj.weight", hf.get(p + "self_attn.k_proj.weight"), (s.kv_heads * hd, H))
        v = _check(p + "self_attn.v_proj.weight", hf.get(p + "self_attn.v_proj.weight"), (s.kv_heads * hd, H))
        per = s.heads // s.kv_heads
        q = q.view(s.kv_heads, per * hd, H)
        return torch.cat([q, k.view(s.kv_heads, hd, H), v.view(s.kv_heads, hd, H)], dim=1).reshape(-1, H)
    if name.endswith("self_attention.linear_qkv.bias"):
        q = _check(p + "self_attn.q_proj.bias", hf.get(p + "self_attn.q_proj.bias"), (s.heads * hd,))
        k = _check(p + "self_attn.k_proj.bias", hf.get(p + "self_attn.k_proj.bias"), (s.kv_heads * hd,))
        v = _check(p + "self_attn.v_proj.bias", hf.get(p + "self_attn.v_proj.bias"), (s.kv_heads * hd,))
        q = q.view(s.kv_heads, (s.heads // s.kv_heads) * hd)
        return torch.cat([q, k.view(s.kv_heads, hd), v.view(s.kv_heads, hd)], dim=1).reshape(-1)
    if name.endswith("self_attention.linear_proj.weight"):
        return _check(p + "self_attn.o_proj.weight", hf.get(p + "self_attn.o_proj.weight"), (H, s.heads * hd))
    if name.endswith("mlp.linear_fc1.weight"):
        gate = _check(p + "mlp.gate_proj.weight", hf.get(p + "mlp.gate_proj.weight"), (F, H))
        up = _check(p + "mlp.up_proj.weight", hf.get(p + "mlp.up_proj.weight"), (F, H))
        return torch.cat([gate, up])
    if name.endswith("mlp.linear_fc2.weight"):
        return _check(p + "mlp.down_proj.weight", hf.get(p + "mlp.down_proj.weight"), (H, F))
    raise ConfigError(f"no HF source for Megatron parameter {name}")


def local_shard(name: str, param: torch.nn.Parameter, full: torch.Tensor, tp_rank: int, tp: int) -> torch.Tensor:
    """This tensor-parallel rank's part of a global tensor, as megatron-core shards it. The split
    dimension is read off the shapes (megatron-core only tags parameters it initialised itself)."""
    if tp == 1 or tuple(param.shape) == tuple(full.shape):
        return full
    dims = [d for d in range(full.dim()) if param.shape[d] * tp == full.shape[d]]
    if len(dims) != 1:
        raise ConfigError(f"{name}: cannot place a {tuple(full.shape)} tensor into a {tuple(param.shape)} "
                          f"parameter at TP={tp}")
    if name.endswith("mlp.linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]])
    return full.chunk(tp, dim=dims[0])[tp_rank]


def hf_tensors_for(key: str, t: torch.Tensor, s: LlamaShape, layer: int | None) -> dict[str, torch.Tensor]:
    """HF tensors from one global Megatron checkpoint tensor (the inverse of megatron_global)."""
    H, hd = s.hidden, s.head_dim
    if key == "embedding.word_embeddings.weight":
        return {"model.embed_tokens.weight": t[: s.vocab]}
    if key == "output_layer.weight":
        return {} if s.tied else {"lm_head.weight": t[: s.vocab]}
    if key == "decoder.final_layernorm.weight":
        return {"model.norm.weight": t}
    p = f"model.layers.{layer}."
    tail = key.removeprefix("decoder.layers.")
    if tail == "self_attention.linear_qkv.layer_norm_weight":
        return {p + "input_layernorm.weight": t}
    if tail == "mlp.linear_fc1.layer_norm_weight":
        return {p + "post_attention_layernorm.weight": t}
    if tail == "self_attention.linear_qkv.weight":
        per = s.heads // s.kv_heads
        g = t.view(s.kv_heads, (per + 2) * hd, H)
        return {p + "self_attn.q_proj.weight": g[:, : per * hd].reshape(-1, H),
                p + "self_attn.k_proj.weight": g[:, per * hd: (per + 1) * hd].reshape(-1, H),
                p + "self_attn.v_proj.weight": g[:, (per + 1) * hd:].reshape(-1, H)}
    if tail == "self_attention.linear_qkv.bias":
        per = s.heads // s.kv_heads
        g = t.view(s.kv_heads, (per + 2) * hd)
        return {p + "self_attn.q_proj.bias": g[:, : per * hd].reshape(-1),
                p + "self_attn.k_proj.bias": g[:, per * hd: (per + 1) * hd].reshape(-1),
                p + "self_attn.v_proj.bias": g[:, (per + 1) * hd:].reshape(-1)}
    if tail == "self_attention.linear_proj.weight":
        return {p + "self_attn.o_proj.weight": t}
    if tail == "mlp.linear_fc1.weight":
        gate, up = t.chunk(2)
        return {p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up}
    if tail == "mlp.linear_fc2.weight":
        return {p + "mlp.down_proj.weight": t}
    raise ConfigError(f"checkpoint tensor {key} has no HF {FAMILIES[s.family]} counterpart (is this a "
                      f"Llama-style model?)")
