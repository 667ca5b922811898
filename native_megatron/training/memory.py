"""What a rank's model state really occupies: weights, gradient buffers, optimizer states.

Counted from the tensors themselves (each storage once), so the figure includes
megatron-core's bucket padding and views: parameters that live in the DDP
parameter buffer are counted as that buffer, fp32 master copies only where the
optimizer made copies, Adam's two moments wherever they were allocated. The
trainer logs it after the first step (when Adam's states exist) and writes
``memory.json`` in the run directory; ``tools/plan.py`` estimates the same
three figures before a job is queued, and the tests hold the two together.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _storages(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            st = t.untyped_storage()
            out[st.data_ptr()] = st.nbytes()
    return out


def _inner_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    chained = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    inner = []
    for opt in chained:
        torch_opt = getattr(opt, "optimizer", opt)
        if isinstance(torch_opt, torch.optim.Optimizer):
            inner.append(torch_opt)
    return inner


def model_state_bytes(model_chunks: list[torch.nn.Module], optimizer) -> dict[str, int]:
    """{"weights", "grads", "optimizer"} bytes held by this rank (DDP-wrapped chunks, megatron optimizer)."""
    weights = _storages(p for chunk in model_chunks for p in chunk.parameters())
    grad_tensors = []
    for chunk in model_chunks:
        buffers = list(getattr(chunk, "buffers", [])) + list(getattr(chunk, "expert_parallel_buffers", []))
        if buffers:
            grad_tensors += [b.grad_data for b in buffers]
        else:
            for p in chunk.parameters():
                main_grad = getattr(p, "main_grad", None)
                grad_tensors.append(main_grad if main_grad is not None else p.grad)
    grads = _storages(g for g in grad_tensors if g is not None)
    optim_tensors = []
    for opt in _inner_optimizers(optimizer):
        for group in opt.param_groups:
            optim_tensors += list(group["params"])  # fp32 masters (or views of the weights: not counted twice)
        for state in opt.state.values():
            optim_tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    optim = {ptr: n for ptr, n in _storages(optim_tensors).items() if ptr not in weights and ptr not in grads}
    return {"weights": sum(weights.values()), "grads": sum(grads.values()), "optimizer": sum(optim.values())}


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; GiB for anything from 1 GiB up."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
