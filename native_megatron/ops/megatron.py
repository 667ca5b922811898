"""Our fused ops inside megatron-core's GPTModel (``model.spec: native``).

- RMSNorm: :class:`NativeRMSNorm` as every layer's input/pre-MLP norm and the final norm
  (a TransformerBlockSubmodules spec).
- SwiGLU: :class:`NativeSwiGLU` as the MLP's activation module; megatron-core's MLP calls a
  spec'd activation module on the whole [gate | up] tensor when ``use_te_activation_func``
  is set (the name says TE; nothing in that path needs TE).
- RoPE: megatron-core sends ``apply_rope_fusion`` through the module attribute
  ``rope_utils.fused_apply_rotary_pos_emb`` (transformer-engine's function when TE is
  installed); :func:`install_rope` points it at ours.
- Cross-entropy: :class:`NativeGPTModel` overrides ``compute_language_model_loss`` with our
  vocab-parallel fused loss.

Parameter names and shapes are those of the local spec, so checkpoints move freely between
``local`` and ``native``.
"""

from __future__ import annotations

import torch

from native_megatron.ops.functional import apply_rope, cross_entropy, rmsnorm, swiglu


def _megatron_module():
    from megatron.core.transformer.module import MegatronModule

    return MegatronModule


# MegatronModule gives the sharded (distributed-checkpoint) state dict: the norm's weight is
# replicated over tensor-parallel ranks, under the same key as the local spec's norm.
class NativeRMSNorm(_megatron_module()):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__(config)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Under sequence parallelism each TP rank sees a slice of the sequence, so the norm's
        # gradient must be summed over the TP group (megatron-core's DDP reads this flag).
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm(x, self.weight, self.eps)


class NativeSwiGLU(_megatron_module()):
    def __init__(self, config) -> None:
        super().__init__(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x)


def fused_rope(t: torch.Tensor, freqs: torch.Tensor, transpose_output_memory: bool = False,
               interleaved: bool = False) -> torch.Tensor:
    """Same signature as transformer-engine's fused_apply_rotary_pos_emb (bshd layout)."""
    if interleaved:
        raise ValueError("model.spec=native supports non-interleaved rotary embeddings (Llama) only")
    return apply_rope(t, freqs)


def install_rope() -> None:
    """Route megatron-core's fused-RoPE path to our kernel (must run before TransformerConfig is built:
    it checks that a fused function is present)."""
    from megatron.core.models.common.embeddings import rope_utils

    rope_utils.fused_apply_rotary_pos_emb = fused_rope


def native_config_overrides() -> dict:
    """TransformerConfig settings the native spec needs."""
    return dict(apply_rope_fusion=True, use_te_activation_func=True, bias_activation_fusion=False,
                persist_layer_norm=False)


def native_block_spec(num_layers: int):
    """Layer specs for ``num_layers`` layers (this pipeline stage's), with our norms and activation."""
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    layer = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    sub = layer.submodules
    sub.input_layernorm = NativeRMSNorm
    sub.pre_mlp_layernorm = NativeRMSNorm
    sub.mlp.submodules.activation_func = ModuleSpec(module=NativeSwiGLU)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=NativeRMSNorm)


def native_gpt_model_class():
    from megatron.core.models.gpt.gpt_model import GPTModel

    class NativeGPTModel(GPTModel):
        """GPTModel whose loss is our fused vocab-parallel softmax cross-entropy."""

        def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            # labels [b, s], logits [s, b, V / TP]; megatron-core's loss is [b, s].
            loss = cross_entropy(logits, labels.transpose(0, 1), group=self.pg_collection.tp)
            return loss.transpose(0, 1).contiguous()

    return NativeGPTModel
