"""Fused ops: RMSNorm, rotary embedding, SwiGLU, and (vocab-parallel) softmax cross-entropy.

Each op runs our C++/CUDA extension (``csrc/``, built by ``pip install``) when it
is built for the tensor's device, and its torch reference twin otherwise; one log
line says which. ``native_megatron.ops.megatron`` plugs them into megatron-core's
GPTModel (``model.spec: native``).
"""

from native_megatron.ops.extension import describe, extension_available
from native_megatron.ops.functional import apply_rope, cross_entropy, rmsnorm, swiglu
from native_megatron.ops.reference import cross_entropy_reference, rmsnorm_reference, rope_reference, swiglu_reference

__all__ = ["apply_rope", "cross_entropy", "rmsnorm", "swiglu", "cross_entropy_reference", "rmsnorm_reference",
           "rope_reference", "swiglu_reference", "describe", "extension_available"]
