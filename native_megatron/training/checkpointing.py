"""Checkpoints with megatron-core dist_checkpointing: atomic, resumable, reshardable.

Layout of ``checkpoint.dir``::

    iter_0000100/            a complete dist_checkpointing checkpoint (+ config.yaml)
    iter_0000200/
    latest                   the step of the newest complete checkpoint, written last
    iter_0000300.partial/    a save in progress (or one a crash interrupted): ignored
    initial/                 the initial weights, with checkpoint.save_initial (for init_from)

A save goes into ``iter_N.partial/`` and is renamed to ``iter_N/`` by rank 0
only after every rank has finished writing; ``latest`` is then replaced
atomically. A crash at any point leaves ``latest`` naming a complete
checkpoint. Model and optimizer are saved in megatron-core's fully reshardable
format, so a checkpoint saved at one TP/PP/DP layout loads at another; the
per-rank RNG states are restored only when the layout is unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from native_megatron.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

LATEST = "latest"
PARTIAL = ".partial"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
# megatron-core's distributed-optimizer format that reshards across TP, PP and DP.
SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def iter_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def latest_step(root: str | Path) -> int | None:
    """The step of the newest complete checkpoint under ``root``, or None."""
    path = Path(root) / LATEST
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not text.isdigit() or not iter_dir(root, int(text)).is_dir():
        logger.warning("ignoring %s: it names no complete checkpoint (%r)", path, text)
        return None
    return int(text)


def complete_steps(root: str | Path) -> list[int]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _ITER_RE.match(p.name)))


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state_object(key: str = "rng_state"):
    """This rank's RNG states, sharded over (pp, tp) and replicated over data parallel."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {
        "random": __import__("random").getstate(),
        "numpy": __import__("numpy").random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size())
    offset = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank())
    return ShardedObject(key, state, shape, offset, replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def restore_rng_state(state: dict) -> None:
    import random

    import numpy as np
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict:
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def build_state_dict(chunks, optimizer, scheduler, trainer_state: dict, config: dict,
                     is_loading: bool, with_optimizer: bool = True, with_rng: bool = True) -> dict:
    """The sharded state dict saved and loaded by dist_checkpointing."""
    sd: dict[str, Any] = model_sharded_state_dict(chunks)
    if with_optimizer:
        if is_loading:
            _materialise_optimizer_state(optimizer)
        # The optimizer finds its parameters' shards by walking the model entries.
        sd["optimizer"] = optimizer.sharded_state_dict(dict(sd), is_loading=is_loading,
                                                       metadata=SHARDING_METADATA)
        sd["scheduler"] = scheduler.state_dict()
        sd["trainer"] = trainer_state
    if with_rng:
        sd["rng_state"] = rng_state_object()
    sd["config"] = config
    return sd


def _materialise_optimizer_state(optimizer) -> None:
    """A fresh distributed optimizer has no Adam state to load into; give it placeholder state.

    megatron-core's own routine: a zero-gradient step at the scheduler's initial
    learning rate; every value is then overwritten by the checkpoint.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def _save_atomically(final: Path, state_dict: dict, config_yaml: str) -> None:
    """Write into ``final.partial`` and rename it to ``final`` once every rank is done."""
    from megatron.core import dist_checkpointing

    partial = Path(str(final) + PARTIAL)
    if _rank0():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(state_dict, str(partial), content_metadata=dict(SHARDING_METADATA))
    _barrier()
    if _rank0():
        atomic_write_text(partial / "config.yaml", config_yaml)
        if final.exists():  # re-saving a step (e.g. after a resume): the new one wins
            shutil.rmtree(final)
        os.replace(partial, final)


def save(root: str | Path, step: int, state_dict: dict, config_yaml: str, keep_last: int) -> Path:
    """Save atomically as ``iter_{step}`` and point ``latest`` at it. Collective: every rank calls it."""
    final = iter_dir(root, step)
    _save_atomically(final, state_dict, config_yaml)
    if _rank0():
        atomic_write_text(Path(root) / LATEST, f"{step}\n")
        _prune(root, keep_last, keep=step)
    _barrier()
    return final


def save_weights(path: str | Path, state_dict: dict, config_yaml: str) -> Path:
    """A weights-only checkpoint (for ``checkpoint.init_from``); resuming never picks it up."""
    _save_atomically(Path(path), state_dict, config_yaml)
    _barrier()
    return Path(path)


def _prune(root: str | Path, keep_last: int, keep: int) -> None:
    steps = complete_steps(root)
    for step in steps[:-keep_last]:
        if step != keep:
            shutil.rmtree(iter_dir(root, step), ignore_errors=True)
    for p in Path(root).iterdir():
        if p.name.endswith(PARTIAL):
            shutil.rmtree(p, ignore_errors=True)


def load(path: str | Path, state_dict: dict) -> dict:
    """Load ``state_dict``'s entries from ``path`` (any TP/PP/DP layout).

    Every requested entry must be in the checkpoint; entries we do not ask for
    (the optimizer when loading weights only, RNG states of another layout) are
    left on disk.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    return dist_checkpointing.load(state_dict, str(path), strict=StrictHandling.RAISE_UNEXPECTED)


def saved_layout_matches(path: str | Path) -> bool:
    """Whether the checkpoint's RNG shards fit the current (pp, tp) layout."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing import load_common_state_dict

    common = load_common_state_dict(str(path))
    saved = (common.get("config") or {}).get("parallel", {})
    return (saved.get("tensor") == ps.get_tensor_model_parallel_world_size()
            and saved.get("pipeline") == ps.get_pipeline_model_parallel_world_size())
