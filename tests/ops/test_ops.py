"""The fused ops against their torch references: values and gradients over a grid of shapes,
dtypes, odd sizes and non-contiguous inputs; torch.library.opcheck for every op; the CUDA
kernels (gpu marker) at bf16 tolerances."""

from __future__ import annotations

import os

import pytest
import torch

from native_megatron.ops import (
    apply_rope,
    cross_entropy,
    cross_entropy_reference,
    extension_available,
    rmsnorm,
    rmsnorm_reference,
    rope_reference,
    swiglu,
    swiglu_reference,
)

ops = torch.ops.native_megatron if extension_available() else None
needs_ext = pytest.mark.skipif(not extension_available(), reason="extension not built (NM_BUILD_EXT=0)")
# Error bounds against the fp32-computing reference: one rounding of the output, a little more for
# gradients (they pass through two roundings and sums).
TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10), torch.bfloat16: (2e-2, 2e-2),
       torch.float16: (2e-3, 2e-3)}
GRAD_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-9, 1e-10), torch.bfloat16: (5e-2, 5e-2),
            torch.float16: (5e-3, 5e-3)}


def test_the_extension_is_built_unless_disabled():
    if os.environ.get("NM_BUILD_EXT") == "0":
        pytest.skip("NM_BUILD_EXT=0")
    assert extension_available(), "pip install built no native_megatron._C; see setup.py"


def make(shape, dtype, device="cpu", contiguous=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    # A transposed copy viewed back: same values, non-contiguous strides.
    t = torch.randn((*shape[:-2], shape[-1], shape[-2]), generator=g).to(device=device, dtype=dtype)
    return t.transpose(-1, -2)


def grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype)
    out.backward(g)
    return out.detach(), [t.grad for t in leaves if t.requires_grad]


def close(a, b, tol):
    torch.testing.assert_close(a.float(), b.float(), rtol=tol[0], atol=tol[1])


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, contiguous", [((4, 64), True), ((3, 5, 33), True), ((1, 1), True),
                                               ((2, 7, 16), False), ((17, 1000), True)])
def test_rmsnorm(dtype, shape, contiguous):
    x = make(shape, dtype, contiguous=contiguous)
    w = make((shape[-1],), dtype, seed=1)
    y, (dx, dw) = grads(lambda a, b: rmsnorm(a, b, 1e-5), x, w)
    yr, (dxr, dwr) = grads(lambda a, b: rmsnorm_reference(a, b, 1e-5), x, w)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    close(y, yr, TOL[dtype])
    close(dx, dxr, GRAD_TOL[dtype])
    # dw sums over rows: its error grows with the row count.
    close(dw, dwr, tuple(t * 4 for t in GRAD_TOL[dtype]))


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("s, b, h, d, rot, per_batch", [(8, 2, 3, 16, 16, False), (5, 1, 2, 10, 6, False),
                                                        (3, 2, 1, 8, 8, True), (64, 2, 4, 128, 128, False)])
def test_rope(dtype, s, b, h, d, rot, per_batch):
    x = make((s, b, h, d), dtype)
    inv_freq = torch.rand(rot // 2, generator=torch.Generator().manual_seed(3))
    pos = torch.arange(s, dtype=torch.float32)[:, None] * inv_freq
    freqs = torch.cat([pos, pos], -1)[:, None, None, :]           # Megatron: both halves share angles
    if per_batch:
        freqs = freqs.expand(s, b, 1, rot) + torch.rand(s, b, 1, rot) * 0.1
    for inverse in (False, True):
        y, (dx,) = grads(lambda a, inv=inverse: apply_rope(a, freqs, inv), x)
        yr, (dxr,) = grads(lambda a, inv=inverse: rope_reference(a, freqs, inv), x)
        close(y, yr, TOL[dtype])
        close(dx, dxr, GRAD_TOL[dtype])


@needs_ext
def test_rope_on_a_strided_query_view_and_as_megatrons_rotary():
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    qkv = make((6, 2, 3, 3 * 16), torch.float32)
    q = qkv[..., :16]                                              # non-contiguous, as after the QKV split
    assert not q.is_contiguous()
    pos = torch.arange(6, dtype=torch.float32)[:, None] * (10000 ** (-torch.arange(0, 16, 2) / 16))
    freqs = torch.cat([pos, pos], -1)[:, None, None, :]
    close(apply_rope(q, freqs), _apply_rotary_pos_emb_bshd(q, freqs), TOL[torch.float32])


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, contiguous", [((4, 64), True), ((3, 5, 22), True), ((1, 2), True),
                                               ((2, 6, 14), False), ((9, 1000), True)])
def test_swiglu(dtype, shape, contiguous):
    x = make(shape, dtype, contiguous=contiguous)
    y, (dx,) = grads(swiglu, x)
    yr, (dxr,) = grads(swiglu_reference, x)
    assert y.shape == (*shape[:-1], shape[-1] // 2)
    close(y, yr, TOL[dtype])
    close(dx, dxr, GRAD_TOL[dtype])


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, v", [(8, 50), (1, 7), (33, 1000), (4, 32000)])
def test_cross_entropy(dtype, n, v):
    logits = (make((n, v), torch.float32) * 4).to(dtype)           # peaked rows, as in a trained model
    target = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(2))
    loss, (dl,) = grads(lambda a: cross_entropy(a, target), logits)
    ref, (dlr,) = grads(lambda a: cross_entropy_reference(a, target), logits)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and dl.dtype == dtype
    close(loss, ref, TOL[torch.float32] if dtype != torch.float64 else TOL[dtype])
    close(dl, dlr, GRAD_TOL[dtype])


@needs_ext
def test_cross_entropy_keeps_3d_shapes_and_strided_logits():
    logits = make((6, 2, 40), torch.float32)[:, :, :30]           # a strided slice of a wider tensor
    target = torch.randint(0, 30, (6, 2))
    close(cross_entropy(logits, target), cross_entropy_reference(logits, target), TOL[torch.float32])


def _opcheck_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=g)
    w = torch.randn(8, generator=g)
    qk = torch.randn(4, 2, 2, 8, generator=g)
    freqs = torch.randn(4, 1, 1, 8, generator=g)
    logits = torch.randn(5, 11, generator=g)
    target = torch.randint(0, 11, (5,), generator=g)
    lse = torch.logsumexp(logits, -1)
    return [
        ("rmsnorm_fwd", (x.clone().requires_grad_(), w.clone().requires_grad_(), 1e-5)),
        ("rmsnorm_bwd", (torch.randn_like(x), x, w, torch.rand(3) + 0.5)),
        ("rope", (qk.clone().requires_grad_(), freqs, False)),
        ("rope", (qk.transpose(0, 1), freqs[:2].expand(2, 4, 1, 8).contiguous()[:, :1], True)),
        ("swiglu_fwd", (x.clone().requires_grad_(),)),
        ("swiglu_bwd", (torch.randn(3, 4, generator=g), x)),
        ("xent_fwd", (logits, target, 0)),
        ("xent_fwd", (logits, target + 5, 5)),
        ("xent_bwd", (torch.rand(5, generator=g), logits, target, lse, 0)),
    ]


@needs_ext
@pytest.mark.parametrize("name, args", _opcheck_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)


@needs_ext
def test_compiled_model_uses_the_ops():
    """torch.compile traces through the fake kernels and gives the eager result."""
    x = make((4, 32), torch.float32).requires_grad_()
    w = make((32,), torch.float32, seed=1).requires_grad_()

    def f(a, b):
        return swiglu(rmsnorm(a, b, 1e-6)).sum()

    eager = f(x, w)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w)
    close(compiled, eager, TOL[torch.float32])


def test_bad_shapes_are_clear_errors():
    if not extension_available():
        pytest.skip("extension not built")
    with pytest.raises(RuntimeError, match="weight must have shape"):
        ops.rmsnorm_fwd(torch.randn(2, 4), torch.randn(3), 1e-5)
    with pytest.raises(RuntimeError, match="rotary dim"):
        ops.rope(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 6), False)
    with pytest.raises(RuntimeError, match="last dimension must be even"):
        ops.swiglu_fwd(torch.randn(2, 5))


# ---------------------------------------------------------------- GPU: the CUDA kernels
BF16_TOL = (2e-2, 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cuda_kernels_match_the_references(dtype):
    assert extension_available("cuda"), "extension built without CUDA kernels"
    dev = "cuda"
    for shape in [(4, 4096), (3, 5, 33), (2, 7, 4096 + 8)]:
        x, w = make(shape, dtype, dev), make((shape[-1],), dtype, dev, seed=1)
        y, (dx, dw) = grads(lambda a, b: rmsnorm(a, b, 1e-5), x, w)
        yr, (dxr, dwr) = grads(lambda a, b: rmsnorm_reference(a, b, 1e-5), x, w)
        close(y, yr, BF16_TOL)
        close(dx, dxr, BF16_TOL)
        close(dw, dwr, (5e-2, 5e-2))
    x = make((2048, 2, 8, 128), dtype, dev)
    inv_freq = 500000 ** (-torch.arange(0, 128, 2, device=dev) / 128)
    pos = torch.arange(2048, device=dev, dtype=torch.float32)[:, None] * inv_freq
    freqs = torch.cat([pos, pos], -1)[:, None, None, :]
    for inverse in (False, True):
        close(apply_rope(x, freqs, inverse), rope_reference(x, freqs, inverse), BF16_TOL)
    x = make((4, 512, 2 * 1000), dtype, dev)
    y, (dx,) = grads(swiglu, x)
    yr, (dxr,) = grads(swiglu_reference, x)
    close(y, yr, BF16_TOL)
    close(dx, dxr, BF16_TOL)
    logits = (make((64, 128256), torch.float32, dev) * 4).to(dtype)
    target = torch.randint(0, 128256, (64,), device=dev)
    loss, (dl,) = grads(lambda a: cross_entropy(a, target), logits)
    ref, (dlr,) = grads(lambda a: cross_entropy_reference(a, target), logits)
    close(loss, ref, (1e-3, 1e-3))
    close(dl, dlr, (1e-2, 1e-4))


@pytest.mark.gpu
def test_cuda_opcheck():
    for name, args in _opcheck_cases():
        moved = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                      for a in args)
        torch.library.opcheck(getattr(ops, name).default, moved)
