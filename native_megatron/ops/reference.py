"""Torch reference twins of the fused ops: plain autograd-able torch, computing in fp32.

They define what the kernels must compute, serve as the fallback when the extension
is not built, and are what the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(_acc(x))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(xf.dtype)
    return y.to(x.dtype)


def rope_reference(x: torch.Tensor, freqs: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """x: [seq, batch, heads, dim]; freqs: [seq, 1 or batch, 1, rot] angles (Megatron's layout,
    non-interleaved "rotate half"). ``inverse`` applies the transpose (the backward pass)."""
    rot = freqs.shape[-1]
    acc = _acc(x)
    xr, rest = x[..., :rot].to(acc), x[..., rot:]
    f = freqs.to(acc)
    cos, sin = f.cos(), f.sin()
    x1, x2 = xr.chunk(2, dim=-1)
    c1, c2 = cos.chunk(2, dim=-1)
    s1, s2 = sin.chunk(2, dim=-1)
    if not inverse:
        y = torch.cat([x1 * c1 - x2 * s1, x2 * c2 + x1 * s2], dim=-1)
    else:
        y = torch.cat([x1 * c1 + x2 * s2, x2 * c2 - x1 * s1], dim=-1)
    return torch.cat([y.to(x.dtype), rest], dim=-1)


def swiglu_reference(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2F] = [gate | up] -> silu(gate) * up."""
    gate, up = x.to(_acc(x)).chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def cross_entropy_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token loss (fp32) over the full vocabulary: logits [..., V], target [...]."""
    flat = logits.reshape(-1, logits.shape[-1]).to(_acc(logits))
    return F.cross_entropy(flat, target.reshape(-1), reduction="none").reshape(target.shape)
