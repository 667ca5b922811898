"""What a run reports: step lines, RUN_DIR/metrics.jsonl, TensorBoard/W&B scalars, the memory report.

Written by the logging rank only (the memory report gathers every rank's
figures first, so it is collective). On a resume, rows the interrupted run
logged past the resumed step are dropped from metrics.jsonl (and TensorBoard
hides them by ``purge_step``), so every step is logged exactly once.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch.distributed as dist

from native_megatron.training.config import TrainConfig
from native_megatron.training.memory import format_bytes, model_state_bytes
from native_megatron.training.metrics import ScalarWriter, StepMetrics, memory_gib, throughput
from native_megatron.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


class MetricsLogger:
    """``close()`` always. ``flops_per_token``, ``world_size`` and ``peak`` (TFLOP/s or None) give MFU."""

    def __init__(self, cfg: TrainConfig, config_dict: dict, enabled: bool, resumed_step: int | None,
                 flops_per_token: float, world_size: int, peak: float | None) -> None:
        self.cfg, self.enabled = cfg, enabled
        self.flops_per_token, self.world_size, self.peak = flops_per_token, world_size, peak
        self.path = os.path.join(cfg.logging.run_dir, "metrics.jsonl")
        self.memory_reported = False
        self.writer = ScalarWriter(cfg.logging.run_dir, cfg.logging.tensorboard, cfg.logging.wandb_project,
                                   config_dict, enabled=enabled,
                                   purge_step=resumed_step + 1 if resumed_step is not None else None)

    def truncate(self, step: int) -> None:
        """Drop metrics.jsonl rows past ``step``: the killed run logged them, this run logs them again."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if row.get("step", 0) <= step:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
            logger.info("metrics.jsonl: dropped %d row(s) past step %d from the interrupted run",
                        len(lines) - len(kept), step)

    def step(self, step: int, loss: float, lr: float, grad_norm: float, seconds: float, tokens: int,
             tokens_so_far: int) -> None:
        """One training step: the log line, the scalars and a metrics.jsonl row."""
        tok_s, tflops, mfu = throughput(tokens, seconds, self.flops_per_token, self.world_size, self.peak)
        m = StepMetrics(step, loss, lr, grad_norm, tok_s, tflops, mfu, memory_gib(), seconds)
        if not self.enabled:
            return
        logger.info(m.line(self.cfg.schedule.train_steps))
        self.writer.scalars(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                                   "perf/tokens_per_s": tok_s, "perf/tflops_per_device": tflops, "perf/mfu": mfu,
                                   "perf/memory_gib": m.memory_gib})
        self._append({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s,
                      "tflops_per_device": tflops, "mfu": mfu, "memory_gib": m.memory_gib, "tokens": tokens_so_far})

    def validation(self, step: int, loss: float | None) -> None:
        if loss is not None and self.enabled:
            logger.info("step %d | validation loss %.4f", step, loss)
            self.writer.scalars(step, {"valid/loss": loss})
            self._append({"step": step, "valid_loss": loss})

    def memory(self, step: int, model, optimizer, rank: int) -> None:
        """Weights, gradient buffers and optimizer states of every rank, measured after the first step.

        Collective (all ranks call it). The logging rank logs the largest rank's figures and
        writes them all to RUN_DIR/memory.json, which tools/plan.py's estimates are checked against.
        """
        from megatron.core import parallel_state

        self.memory_reported = True
        mine = {"rank": rank, "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
                "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                "dp_rank": parallel_state.get_data_parallel_rank(), **model_state_bytes(model, optimizer)}
        ranks = [mine]
        if dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        if not self.enabled:
            return
        worst = max(ranks, key=lambda r: r["weights"] + r["grads"] + r["optimizer"])
        logger.info("model state per rank (largest, rank %d): weights %s, gradients %s, optimizer states %s; "
                    "peak memory so far %.2f GiB", worst["rank"], format_bytes(worst["weights"]),
                    format_bytes(worst["grads"]), format_bytes(worst["optimizer"]), memory_gib())
        atomic_write_text(os.path.join(self.cfg.logging.run_dir, "memory.json"),
                          json.dumps({"step": step, "ranks": ranks}, indent=1))

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self.writer.close()
