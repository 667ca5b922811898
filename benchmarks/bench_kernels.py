#!/usr/bin/env python3
"""Fused-op speed: achieved bandwidth against a device-to-device copy, and time beside torch
eager, torch.compile, and (when installed) transformer-engine and Liger-Kernel, all measured
in the same run on Llama-3-8B-like shapes.

    python benchmarks/bench_kernels.py                      # CUDA when available
    python benchmarks/bench_kernels.py --device cpu --scale 0.05

"bw/copy" is the op's minimum traffic (each input read once, each output written once) over its
time, divided by the bandwidth of `dst.copy_(src)` on a 1 GiB buffer measured here: 1.0 means the
op runs as fast as memory allows. The other columns are the alternative's time over ours (above
1.0: ours is faster). Forward and backward are timed separately. A competitor that fails (an API
that moved between versions) leaves its column empty and its error in the JSON. On CUDA it also
measures the cross-entropy's memory: the peak a forward and backward allocate beyond the logits,
the targets and the one logits-sized gradient, in logits-sized buffers ("xent extra").

    python benchmarks/bench_kernels.py --json bench_kernels.json   # the table, and every number as JSON
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
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


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def optional_competitors():
    """transformer-engine and Liger-Kernel functions when installed (each independently), and what was found:
    {"transformer-engine": version, "absent" or "unusable: error", "liger-kernel": likewise}."""
    te, liger = {}, {}
    found = {"transformer-engine": "absent", "liger-kernel": "absent"}
    try:
        import transformer_engine.pytorch as tep

        te["rmsnorm"] = tep.RMSNorm
        try:
            from transformer_engine.pytorch.attention.rope import apply_rotary_pos_emb as te_rope
        except ImportError:
            from transformer_engine.pytorch.attention import apply_rotary_pos_emb as te_rope
        te["rope"] = te_rope
        try:
            from transformer_engine.pytorch.cross_entropy import parallel_cross_entropy

            te["xent"] = parallel_cross_entropy
        except ImportError:  # older TE: no fused cross-entropy
            pass
        found["transformer-engine"] = getattr(tep, "__version__", None) or package_version("transformer-engine")
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("transformer_engine"):
            found["transformer-engine"] = f"unusable: {exc}"
    except Exception as exc:  # noqa: BLE001  (any import or API problem: leave the column empty, say why)
        found["transformer-engine"] = f"unusable: {type(exc).__name__}: {exc}"
    try:
        from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        liger = {"rmsnorm": LigerRMSNormFunction, "swiglu": LigerSiLUMulFunction, "xent": LigerCrossEntropyFunction}
        found["liger-kernel"] = package_version("liger-kernel")
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("liger_kernel"):
            found["liger-kernel"] = f"unusable: {exc}"
    except Exception as exc:  # noqa: BLE001
        found["liger-kernel"] = f"unusable: {type(exc).__name__}: {exc}"
    return te, liger, found


def cases(device: str, dtype, scale: float) -> list[tuple[str, object]]:
    """[(op, build)], where build() makes the op's inputs and returns (bytes moved fwd, bytes bwd, leaf, ours,
    eager, te, liger): one op at a time, so that one whose inputs or imports fail costs only its own row."""
    tokens = max(8, int(8192 * scale))
    hidden, ffn, heads, head_dim, vocab = 4096, 14336, 32, 128, 128256
    if scale < 1:
        hidden, ffn, vocab = max(64, int(hidden * scale) // 64 * 64), max(64, int(ffn * scale) // 64 * 64), \
            max(512, int(vocab * scale))
    b = torch.finfo(dtype).bits // 8
    te, liger, _ = optional_competitors()
    cuda = device == "cuda"

    def norm_case():
        x = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
        w = torch.ones(hidden, device=device, dtype=dtype, requires_grad=True)
        te_norm = te["rmsnorm"](hidden, eps=1e-5, params_dtype=dtype).to(device) if "rmsnorm" in te and cuda else None
        return (2 * x.numel() * b, 3 * x.numel() * b, x,
                lambda: rmsnorm(x, w, 1e-5), lambda: F.rms_norm(x, (hidden,), w, 1e-5),
                (lambda: te_norm(x)) if te_norm else None,
                (lambda: liger["rmsnorm"].apply(x, w, 1e-5)) if "rmsnorm" in liger and cuda else None)

    def rope_case():
        from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

        q = torch.randn(tokens, 1, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        pos = torch.arange(tokens, device=device, dtype=torch.float32)[:, None] * \
            (500000 ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
        freqs = torch.cat([pos, pos], -1)[:, None, None, :]
        return (2 * q.numel() * b, 2 * q.numel() * b, q,
                lambda: apply_rope(q, freqs), lambda: _apply_rotary_pos_emb_bshd(q, freqs),
                (lambda: te["rope"](q, freqs, tensor_format="sbhd", fused=True)) if "rope" in te and cuda else None,
                None)

    def swiglu_case():
        g = torch.randn(tokens, 2 * ffn, device=device, dtype=dtype, requires_grad=True)

        def eager_swiglu():
            a, c = g.chunk(2, -1)
            return F.silu(a) * c

        def liger_swiglu():
            a, c = g.chunk(2, -1)
            return liger["swiglu"].apply(a, c)

        return (3 * tokens * ffn * b, 5 * tokens * ffn * b, g, lambda: swiglu(g), eager_swiglu, None,
                liger_swiglu if "swiglu" in liger and cuda else None)

    def xent_case():
        n = max(8, tokens // 2)
        logits = torch.randn(n, vocab, device=device, dtype=dtype, requires_grad=True)
        target = torch.randint(0, vocab, (n,), device=device)
        return (n * vocab * b, 2 * n * vocab * b, logits,
                lambda: cross_entropy(logits, target),
                lambda: F.cross_entropy(logits.float(), target, reduction="none"),
                (lambda: te["xent"](logits[None], target[None], 0.0, False, None)[0]) if "xent" in te and cuda
                else None,
                (lambda: liger["xent"].apply(logits, target)[0]) if "xent" in liger and cuda else None)

    return [("rmsnorm", norm_case), ("rope (q)", rope_case), ("swiglu", swiglu_case), ("cross-entropy", xent_case)]


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


def xent_extra_memory(fn, logits: torch.Tensor) -> float | None:
    """Peak bytes one forward and backward allocate beyond what exists before (logits, targets) and the
    logits-sized gradient itself, in logits-sized buffers; None off CUDA (no allocator statistics)."""
    if logits.device.type != "cuda":
        return None
    logits.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = fn()
    y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    size = logits.numel() * logits.element_size()
    extra = torch.cuda.max_memory_allocated() - base - size
    del y
    logits.grad = None
    return extra / size


def ratio(theirs: float, ours: float) -> float | None:
    return theirs / ours if math.isfinite(theirs) and math.isfinite(ours) and ours > 0 else None


def ours_path(device: str) -> str:
    """What "ours" runs on ``device``: the extension's kernels, or (not built for it) the torch reference."""
    from native_megatron.ops import extension_available

    if not extension_available(device):
        return "torch reference"
    return "CUDA kernels" if device == "cuda" else "CPU kernels"


def bench_op(report: dict, device: str, name: str, build, iters: int, compile_: bool, copy_bw: float) -> None:
    """Time one op, forward and backward, ours and each alternative; its rows go into ``report``."""
    nbytes_f, nbytes_b, leaf, ours, eager, te_fn, liger_fn = build()
    alternatives = {"eager": eager, "compile": torch.compile(eager) if compile_ else None,
                    "te": te_fn, "liger": liger_fn}
    ours_t = fwd_bwd_times(device, ours, leaf, iters)
    cols = {}
    for col, fn in alternatives.items():
        if fn is None:
            continue
        try:
            cols[col] = fwd_bwd_times(device, fn, leaf, iters)
        except Exception as exc:  # noqa: BLE001  (a competitor's failure is reported, not fatal)
            report["errors"].append({"op": name, "column": col, "error": f"{type(exc).__name__}: {exc}"})
    if name == "cross-entropy":
        for col, fn in [("ours", ours), ("eager", eager), ("te", te_fn), ("liger", liger_fn)]:
            if fn is not None and col in ("ours", *cols):
                report["xent_extra"][col] = xent_extra_memory(fn, leaf)
    for i, (pass_name, nbytes) in enumerate((("fwd", nbytes_f), ("bwd", nbytes_b))):
        t = ours_t[i]
        r = {k: ratio(v[i], t) for k, v in cols.items()}
        report["rows"].append({"op": name, "pass": pass_name, "ours_ms": t * 1e3, "bytes": nbytes,
                               "bw_copy": nbytes / t / copy_bw if math.isfinite(t) else None,
                               "ms": {k: v[i] * 1e3 for k, v in cols.items()}, "ratio": r})
        shown = {k: f"{v:.2f}" if v is not None else "-" for k, v in r.items()}
        print(f"{name:14} {pass_name:4} {t * 1e3:9.3f} {nbytes / t / copy_bw:8.2f} {shown.get('eager', '-'):>11} "
              f"{shown.get('compile', '-'):>13} {shown.get('te', '-'):>8} {shown.get('liger', '-'):>11}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--scale", type=float, default=None, help="shape scale (default 1 on GPU, 0.05 on CPU)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write every number here (JSON), rewritten after each op")
    args = p.parse_args(argv)
    device, dtype = args.device, getattr(torch, args.dtype)
    scale = args.scale if args.scale is not None else (1.0 if device == "cuda" else 0.05)
    iters = args.iters or (20 if device == "cuda" else 5)
    copy_bw = copy_bandwidth(device, (1 << 30) if device == "cuda" else (1 << 26), iters)
    found = optional_competitors()[2]
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "ops": describe(),
              "ours": ours_path(device), "dtype": args.dtype, "scale": scale, "iters": iters,
              "copy_gbps": copy_bw / 1e9, "competitors": found, "compile": not args.no_compile, "rows": [],
              "errors": [], "xent_extra": {}, "finished": False}

    def write() -> None:
        if args.json:
            tmp = f"{args.json}.partial"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=1)
            os.replace(tmp, args.json)

    print(f"device: {report['device']}; ops: {describe()}; ours: {report['ours']}")
    print(f"dtype {args.dtype}, scale {scale}; copy bandwidth {copy_bw / 1e9:.0f} GB/s; "
          + ", ".join(f"{k} {v}" for k, v in found.items()))
    header = f"{'op':14} {'pass':4} {'ours ms':>9} {'bw/copy':>8} {'eager/ours':>11} {'compile/ours':>13} " \
             f"{'te/ours':>8} {'liger/ours':>11}"
    print(header)
    print("-" * len(header))
    write()
    for name, build in cases(device, dtype, scale):
        try:
            bench_op(report, device, name, build, iters, not args.no_compile, copy_bw)
        except Exception as exc:  # noqa: BLE001  (one op failing leaves the others their rows)
            report["errors"].append({"op": name, "column": "ours", "error": f"{type(exc).__name__}: {exc}"})
            print(f"{name:14} failed: {type(exc).__name__}: {exc}", flush=True)
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
            write()
    if any(v is not None for v in report["xent_extra"].values()):
        print("xent extra (peak beyond logits and their gradient, in logits-sized buffers): "
              + ", ".join(f"{k} {v:.3f}" for k, v in report["xent_extra"].items() if v is not None))
    for e in report["errors"]:
        print(f"{e['op']} {e['column']}: {e['error']}", file=sys.stderr)
    report["finished"] = True
    write()
    return 1 if any(e["column"] == "ours" for e in report["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())
