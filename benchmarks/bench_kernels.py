#!/usr/bin/env python3
"""Fused-op speed: achieved bandwidth against a device-to-device copy, and time beside torch
eager, torch.compile, and (when installed) transformer-engine and Liger-Kernel, all measured
in the same run on Llama-3-8B-like shapes.

    python benchmarks/bench_kernels.py                      # CUDA when available
    python benchmarks/bench_kernels.py --device cpu --scale 0.05

"bw/copy" is the op's minimum traffic (each input read once, each output written once) over its
time, divided by the bandwidth of `dst.copy_(src)` on a 1 GiB buffer measured here: 1.0 means the
op runs as fast as memory allows. The other columns are the alternative's time over ours (above
1.0: ours is faster). Forward and backward are timed separately.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from native_megatron.ops import apply_rope, cross_entropy, describe, rmsnorm, swiglu


def timer(device: str, fn, iters: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int, iters: int) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    return 2 * nbytes / timer(device, lambda: dst.copy_(src), iters)


def optional_competitors():
    """transformer-engine and Liger-Kernel functions when installed (each independently)."""
    te, liger = {}, {}
    try:
        import transformer_engine.pytorch as tep

        te["rmsnorm"] = tep.RMSNorm
        try:
            from transformer_engine.pytorch.attention.rope import apply_rotary_pos_emb as te_rope
        except ImportError:
            from transformer_engine.pytorch.attention import apply_rotary_pos_emb as te_rope
        te["rope"] = te_rope
    except Exception:  # noqa: BLE001  (any import or API problem: just leave the column empty)
        pass
    try:
        from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        liger = {"rmsnorm": LigerRMSNormFunction, "swiglu": LigerSiLUMulFunction, "xent": LigerCrossEntropyFunction}
    except Exception:  # noqa: BLE001
        pass
    return te, liger


def cases(device: str, dtype, scale: float):
    """(name, bytes moved fwd, bytes bwd, ours, eager, te, liger) with inputs built once."""
    tokens = max(8, int(8192 * scale))
    hidden, ffn, heads, kv_heads, head_dim, vocab = 4096, 14336, 32, 8, 128, 128256
    if scale < 1:
        hidden, ffn, vocab = max(64, int(hidden * scale) // 64 * 64), max(64, int(ffn * scale) // 64 * 64), \
            max(512, int(vocab * scale))
    b = torch.finfo(dtype).bits // 8
    te, liger = optional_competitors()
    out = []

    x = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    w = torch.ones(hidden, device=device, dtype=dtype, requires_grad=True)
    te_norm = None
    if "rmsnorm" in te and device == "cuda":
        te_norm = te["rmsnorm"](hidden, eps=1e-5, params_dtype=dtype).to(device)
    out.append(("rmsnorm", 2 * x.numel() * b, 3 * x.numel() * b, x,
                lambda: rmsnorm(x, w, 1e-5), lambda: F.rms_norm(x, (hidden,), w, 1e-5),
                (lambda: te_norm(x)) if te_norm else None,
                (lambda: liger["rmsnorm"].apply(x, w, 1e-5)) if "rmsnorm" in liger and device == "cuda" else None))

    s = tokens
    q = torch.randn(s, 1, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    pos = torch.arange(s, device=device, dtype=torch.float32)[:, None] * \
        (500000 ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.cat([pos, pos], -1)[:, None, None, :]
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    out.append(("rope (q)", 2 * q.numel() * b, 2 * q.numel() * b, q,
                lambda: apply_rope(q, freqs), lambda: _apply_rotary_pos_emb_bshd(q, freqs),
                (lambda: te["rope"](q, freqs, tensor_format="sbhd", fused=True)) if "rope" in te and device == "cuda"
                else None, None))
    del kv_heads

    g = torch.randn(tokens, 2 * ffn, device=device, dtype=dtype, requires_grad=True)

    def eager_swiglu():
        a, c = g.chunk(2, -1)
        return F.silu(a) * c

    def liger_swiglu():
        a, c = g.chunk(2, -1)
        return liger["swiglu"].apply(a, c)

    out.append(("swiglu", 3 * tokens * ffn * b, 5 * tokens * ffn * b, g, lambda: swiglu(g), eager_swiglu, None,
                liger_swiglu if "swiglu" in liger and device == "cuda" else None))

    n_xent = max(8, tokens // 2)
    logits = torch.randn(n_xent, vocab, device=device, dtype=dtype, requires_grad=True)
    target = torch.randint(0, vocab, (n_xent,), device=device)
    out.append(("cross-entropy", n_xent * vocab * b, 2 * n_xent * vocab * b, logits,
                lambda: cross_entropy(logits, target),
                lambda: F.cross_entropy(logits.float(), target, reduction="none"), None,
                (lambda: liger["xent"].apply(logits, target)[0]) if "xent" in liger and device == "cuda" else None))
    return out


def fwd_bwd_times(device, fn, leaf, iters):
    fwd = timer(device, lambda: fn(), iters)
    y = fn()
    grad = torch.ones_like(y) if y.dim() else torch.ones((), device=y.device, dtype=y.dtype)

    def backward():
        leaf.grad = None
        y.backward(grad, retain_graph=True)

    try:
        bwd = timer(device, backward, iters)
    except RuntimeError:
        bwd = float("nan")
    return fwd, bwd


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--scale", type=float, default=None, help="shape scale (default 1 on GPU, 0.05 on CPU)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = p.parse_args()
    device, dtype = args.device, getattr(torch, args.dtype)
    scale = args.scale if args.scale is not None else (1.0 if device == "cuda" else 0.05)
    iters = args.iters or (20 if device == "cuda" else 5)
    copy_bw = copy_bandwidth(device, (1 << 30) if device == "cuda" else (1 << 26), iters)
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; ops: {describe()}")
    print(f"dtype {args.dtype}, scale {scale}; copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    header = f"{'op':14} {'pass':4} {'ours ms':>9} {'bw/copy':>8} {'eager/ours':>11} {'compile/ours':>13} " \
             f"{'te/ours':>8} {'liger/ours':>11}"
    print(header)
    print("-" * len(header))
    for name, bytes_f, bytes_b, leaf, ours, eager, te_fn, liger_fn in cases(device, dtype, scale):
        compiled = None if args.no_compile else torch.compile(eager)
        ours_t = fwd_bwd_times(device, ours, leaf, iters)
        cols = {"eager": fwd_bwd_times(device, eager, leaf, iters)}
        if compiled is not None:
            cols["compile"] = fwd_bwd_times(device, compiled, leaf, iters)
        if te_fn is not None:
            cols["te"] = fwd_bwd_times(device, te_fn, leaf, iters)
        if liger_fn is not None:
            cols["liger"] = fwd_bwd_times(device, liger_fn, leaf, iters)
        for i, (pass_name, nbytes) in enumerate((("fwd", bytes_f), ("bwd", bytes_b))):
            t = ours_t[i]
            r = {k: f"{v[i] / t:.2f}" if math.isfinite(t) and math.isfinite(v[i]) else "-" for k, v in cols.items()}
            print(f"{name:14} {pass_name:4} {t * 1e3:9.3f} {nbytes / t / copy_bw:8.2f} {r.get('eager', '-'):>11} "
                  f"{r.get('compile', '-'):>13} {r.get('te', '-'):>8} {r.get('liger', '-'):>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
