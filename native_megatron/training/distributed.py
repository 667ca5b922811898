"""Process groups: torch.distributed plus megatron-core's parallel_state, and their teardown."""

from __future__ import annotations

import datetime
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from native_megatron.training import cpu_compat, mcore_patches
from native_megatron.training.config import TrainConfig, validate_for_world
from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where this process sits: its rank in the world and the parallel sizes it runs under.

    (The planner's ``Layout`` is a candidate parallel layout, not a running process.)"""

    world_size: int
    rank: int
    tp: int
    pp: int
    dp: int
    vp: int | None
    on_gpu: bool

    @property
    def is_logging_rank(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: TrainConfig, timeout_minutes: int = 30) -> Placement:
    """Start torch.distributed (nccl on GPU, gloo on CPU) and megatron-core's model-parallel groups.

    Works under ``torchrun`` and as a plain single process (world size 1).
    """
    from megatron.core import parallel_state

    on_gpu = torch.cuda.is_available()
    backend = cfg.parallel.backend if cfg.parallel.backend != "auto" else ("nccl" if on_gpu else "gloo")
    alone = "RANK" not in os.environ  # plain `python pretrain_arabic.py`: a world of one
    if alone:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        if alone:
            init_world_of_one(backend, timeout_minutes)
        else:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    world, rank = dist.get_world_size(), dist.get_rank()
    dp = validate_for_world(cfg, world)
    cpu_compat.install()
    mcore_patches.install()
    p = cfg.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor,
        pipeline_model_parallel_size=p.pipeline,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline,
    )
    set_seeds(cfg.seed)
    return Placement(world, rank, p.tensor, p.pipeline, dp, p.virtual_pipeline, on_gpu)


def set_seeds(seed: int) -> None:
    """Seed every generator as Megatron-LM does: per pipeline stage, and per TP rank for TP regions."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    model_parallel_cuda_manual_seed(stage_seed)


def destroy_distributed() -> None:
    """Tear everything down; safe to call when nothing was set up, and twice."""
    try:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
    except Exception:  # noqa: BLE001 - teardown must not mask the original error
        logger.debug("destroy_model_parallel failed", exc_info=True)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def decided_on_rank0(fn):
    """``fn()`` run on rank 0 only, its result (or its ConfigError) on every rank.

    For start-up checks that read files: 512 ranks scanning the same .bin or loading
    the same checkpoint metadata is 511 times wasted I/O on a shared file system,
    and one answer keeps the ranks agreeing even if a file changes meanwhile.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return fn()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except ConfigError as exc:
            box[0] = ("error", exc)
        except Exception as exc:
            box[0] = ("crash", f"{type(exc).__name__}: {exc}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        if dist.get_rank() != 0:
            value.shown_by_rank0 = True  # rank 0 raises the same error: the command line prints it once
        raise value
    if kind == "crash":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def init_world_of_one(backend: str = "gloo", timeout_minutes: int = 30) -> None:
    """A one-rank process group on an in-memory store: no port to pick, so no race for one with
    other processes starting at the same moment (a free port found and released can be taken)."""
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(minutes=timeout_minutes))

