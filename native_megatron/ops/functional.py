"""The fused ops as autograd-aware functions, on the extension when built, else the torch references.

The extension's ops (``torch.ops.native_megatron.*``, schemas in ``csrc/ops.cpp``) get here:
fake kernels (shapes and dtypes only) so that torch.compile can trace them, and autograd
formulas that call the matching backward op. The cross-entropy is an autograd.Function
because its forward combines per-shard statistics across the tensor-parallel group.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from native_megatron.ops import reference
from native_megatron.ops.extension import extension_available, log_path_once


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _rows(t: torch.Tensor):
    return math.prod(t.shape[:-1])


# ------------------------------------------------------------------ registration (extension only)
def _register() -> None:
    lib = "native_megatron::"
    rf = torch.library.register_fake

    @rf(lib + "rmsnorm_fwd")
    def _(x, weight, eps):
        return x.new_empty(x.shape), x.new_empty((_rows(x),), dtype=_acc(x))

    @rf(lib + "rmsnorm_bwd")
    def _(dy, x, weight, rstd):
        return x.new_empty(x.shape), weight.new_empty(weight.shape)

    @rf(lib + "rope")
    def _(x, freqs, inverse):
        return x.new_empty(x.shape)

    @rf(lib + "swiglu_fwd")
    def _(x):
        return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))

    @rf(lib + "swiglu_bwd")
    def _(dy, x):
        return x.new_empty(x.shape)

    @rf(lib + "xent_fwd")
    def _(logits, target, vocab_start):
        n = logits.shape[0]
        return tuple(logits.new_empty((n,), dtype=_acc(logits)) for _ in range(3))

    @rf(lib + "xent_bwd")
    def _(grad, logits, target, lse, vocab_start):
        return logits.new_empty(logits.shape)

    ops = torch.ops.native_megatron

    def rms_setup(ctx, inputs, output):
        x, weight, _eps = inputs
        ctx.save_for_backward(x, weight, output[1])

    def rms_backward(ctx, dy, _drstd):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = ops.rmsnorm_bwd(dy, x, weight, rstd)
        return dx, dw, None

    torch.library.register_autograd(lib + "rmsnorm_fwd", rms_backward, setup_context=rms_setup)

    def rope_setup(ctx, inputs, output):
        _x, freqs, inverse = inputs
        ctx.save_for_backward(freqs)
        ctx.inverse = inverse

    def rope_backward(ctx, dy):
        (freqs,) = ctx.saved_tensors
        # The rotation is orthogonal: its gradient is the inverse rotation of dy.
        return ops.rope(dy, freqs, not ctx.inverse), None, None

    torch.library.register_autograd(lib + "rope", rope_backward, setup_context=rope_setup)

    def swiglu_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def swiglu_backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return ops.swiglu_bwd(dy, x)

    torch.library.register_autograd(lib + "swiglu_fwd", swiglu_backward, setup_context=swiglu_setup)


_HAVE_CPU = extension_available()
_HAVE_CUDA = extension_available("cuda")
if _HAVE_CPU:
    _register()


def _use_ext(t: torch.Tensor) -> bool:
    if not torch.compiler.is_compiling():
        log_path_once()
    return _HAVE_CUDA if t.is_cuda else (_HAVE_CPU and t.device.type == "cpu")


# ------------------------------------------------------------------ public functions
def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, output in x's dtype."""
    if _use_ext(x):
        return torch.ops.native_megatron.rmsnorm_fwd(x, weight, eps)[0]
    return reference.rmsnorm_reference(x, weight, eps)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotary embedding, x: [seq, batch, heads, dim], freqs: [seq, 1 or batch, 1, rot] (Megatron layout)."""
    if _use_ext(x):
        return torch.ops.native_megatron.rope(x, freqs, inverse)
    return reference.rope_reference(x, freqs, inverse)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x = [gate | up] on the last dimension."""
    if _use_ext(x):
        return torch.ops.native_megatron.swiglu_fwd(x)
    return reference.swiglu_reference(x)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, group, use_ext):
        if use_ext:
            mx, sumexp, tgt = torch.ops.native_megatron.xent_fwd(logits, target, vocab_start)
        else:
            lf = logits.to(_acc(logits))
            mx = lf.max(dim=-1).values
            sumexp = torch.exp(lf - mx[:, None]).sum(-1)
            local = target - vocab_start
            inside = (local >= 0) & (local < logits.shape[1])
            tgt = torch.where(inside, lf.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])[:, 0],
                              torch.zeros_like(mx))
        if group is not None and dist.get_world_size(group) > 1:
            # Combine shards: global max, sums rescaled to it, and the one shard's target logit.
            gmax = mx.clone()
            dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
            sumexp = sumexp * torch.exp(mx - gmax)
            dist.all_reduce(sumexp, group=group)
            dist.all_reduce(tgt, group=group)
            mx = gmax
        lse = mx + torch.log(sumexp)
        ctx.save_for_backward(logits, target, lse)
        ctx.vocab_start, ctx.use_ext = vocab_start, use_ext
        return lse - tgt

    @staticmethod
    def backward(ctx, grad):
        logits, target, lse = ctx.saved_tensors
        if ctx.use_ext:
            dlogits = torch.ops.native_megatron.xent_bwd(grad.contiguous(), logits, target, lse, ctx.vocab_start)
        else:
            p = torch.exp(logits.to(lse.dtype) - lse[:, None])
            local = target - ctx.vocab_start
            inside = (local >= 0) & (local < logits.shape[1])
            p[inside, local[inside]] -= 1
            dlogits = (p * grad[:, None]).to(logits.dtype)
        return dlogits, None, None, None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, group=None) -> torch.Tensor:
    """Per-token softmax cross-entropy (fp32, target's shape).

    logits: [..., V_local], this rank's slice of the vocabulary when ``group`` (the tensor-parallel
    group) has more than one rank: rank r holds ids [r * V_local, (r + 1) * V_local), as in
    megatron-core's vocab-parallel output layer. target: [...] global token ids.
    """
    v_local = logits.shape[-1]
    rank = dist.get_rank(group) if group is not None and dist.get_world_size(group) > 1 else 0
    flat, tgt = logits.reshape(-1, v_local), target.reshape(-1)
    loss = _VocabParallelCrossEntropy.apply(flat, tgt, rank * v_local, group, _use_ext(logits))
    return loss.reshape(target.shape)
