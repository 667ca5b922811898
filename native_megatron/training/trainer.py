"""The training loop, readable top to bottom: build, resume, step, log, evaluate, save.

Built on megatron-core: GPTModel chunks wrapped in its DistributedDataParallel,
its (distributed) optimizer and LR scheduler, ``get_forward_backward_func()``
for no-pipelining / 1F1B / interleaved 1F1B, and ``finalize_model_grads`` for the
gradient all-reduces. Checkpoints go through :mod:`checkpoint_manager` (resume point,
init_from, saves), metrics through :mod:`metrics_logger`, as torchtitan's components.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import torch
import torch.distributed as dist
import yaml

from native_megatron.training import megatron_config, packing
from native_megatron.training.checkpoint_manager import (
    CheckpointManager,
    adopt_start_model,
    check_data_setup,
    find_resume_point,
)
from native_megatron.training.config import TrainConfig, with_absolute_paths
from native_megatron.training.cpu_compat import cuda_to_cpu
from native_megatron.training.data import build_datasets, microbatch_iterator
from native_megatron.training.distributed import Placement, decided_on_rank0, init_distributed
from native_megatron.training.metrics import ModelShape, peak_tflops, throughput
from native_megatron.training.metrics_logger import MetricsLogger
from native_megatron.training.model import build_model_chunks, padded_vocab_size, resolve_spec_name
from native_megatron.training.preemption import PreemptionHandler
from native_megatron.utils.config import ConfigError, config_to_dict
from native_megatron.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a checkpoint needs, beyond weights and optimizer, to continue the same run."""

    step: int = 0
    consumed_samples: int = 0
    tokens: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed_samples, "tokens": self.tokens}

    def load_state_dict(self, sd: dict) -> None:
        self.step, self.consumed_samples, self.tokens = sd["step"], sd["consumed_samples"], sd["tokens"]


@dataclass
class TrainResult:
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)
    valid_losses: dict[int, float] = field(default_factory=dict)
    checkpoint: str | None = None
    stopped_by_signal: bool = False
    seconds: float = 0.0        # wall time of train(), loading and saving included
    step_seconds: float = 0.0   # time inside training steps only
    tokens: int = 0             # tokens trained on by this run (not counting a resumed run's earlier ones)
    tokens_per_s: float = 0.0   # tokens / step_seconds
    mfu: float | None = None

    def summary(self) -> str:
        last_loss = self.losses[max(self.losses)] if self.losses else None
        last_valid = self.valid_losses[max(self.valid_losses)] if self.valid_losses else None
        parts = [f"step {self.final_step}{' (stopped by signal)' if self.stopped_by_signal else ''}",
                 f"{self.seconds:.1f}s wall", f"{self.tokens:,} tokens"]
        if last_loss is not None:
            parts.append(f"final loss {last_loss:.4f}")
        if last_valid is not None:
            parts.append(f"validation loss {last_valid:.4f}")
        if self.tokens:
            parts.append(f"{self.tokens_per_s:,.0f} tok/s in steps")
        if self.mfu is not None:
            parts.append(f"MFU {100 * self.mfu:.1f}%")
        parts.append(f"checkpoint {self.checkpoint}")
        return "done: " + " | ".join(parts)


def forward_step(data_iterator: Iterator[dict], model: torch.nn.Module, device: torch.device, thd: bool = False,
                 loss_reduction: str = "mean"):
    """One microbatch forward; the loss is a sum over tokens, which megatron-core divides by the count
    returned with it (see :func:`_loss_func`).

    A batch with ``segment_ids`` holds packed conversations: attention stays within each, by a
    block-diagonal mask, or with ``thd`` (the te spec) by THD cu_seqlens (see ``packing``).
    """
    batch = next(data_iterator)
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True)
    attention_mask = packed = None
    if "segment_ids" in batch:
        segments = batch["segment_ids"].to(device, non_blocking=True)
        if thd:
            packed = packing.packed_seq_params(segments)
        else:
            attention_mask = packing.block_causal_mask(segments)
    output = model(tokens, position_ids, attention_mask, labels=labels, packed_seq_params=packed)
    return output, partial(_loss_func, loss_mask, loss_reduction)


def _loss_func(loss_mask: torch.Tensor, loss_reduction: str, output: torch.Tensor):
    """(loss sum, divisor, report). megatron-core adds the divisors of every microbatch and data-parallel
    rank and scales the gradients by one over the total: the loss tokens for ``mean``; one per
    microbatch for ``sum`` (open-instruct's ``--reduce_loss sum``, where accelerate divides by the
    accumulation steps and DDP averages over ranks). The report is the per-token mean either way."""
    losses = output.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    if loss_reduction == "sum":
        num_tokens = torch.ones_like(num_tokens)
    report = torch.stack([loss_sum.detach(), mask.sum().detach()])
    return loss_sum, num_tokens, {"lm loss": report}


class Trainer:
    """Owns the model, optimizer and data of one run; checkpoints and metrics go through their managers.

    Reads as torchtitan's: build (``__init__``), loop (:meth:`train`), evaluate. ``close()`` always.
    """

    def __init__(self, cfg: TrainConfig, given_keys: set[str] | None = None) -> None:
        """``given_keys``: the config keys the user set (None: all), see :func:`adopt_checkpoint_model`."""
        # First: a Ctrl-C or SIGTERM during set-up (a long resume) then saves after the first step.
        self.preemption = PreemptionHandler()
        self._scope = contextlib.ExitStack()
        try:
            # One CPU-compatibility scope for the trainer's life (a no-op with CUDA): megatron-core's
            # "cuda" tensors land on the CPU wherever the trainer calls it (see cpu_compat).
            self._scope.enter_context(cuda_to_cpu())
            self._setup(cfg, given_keys)
        except BaseException:
            self._scope.close()
            self.preemption.restore()
            raise

    def _setup(self, cfg: TrainConfig, given_keys: set[str] | None) -> None:
        self.layout: Placement = init_distributed(cfg)
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.layout.on_gpu \
            else torch.device("cpu")
        self.state = TrainState()
        point = decided_on_rank0(partial(find_resume_point, cfg, self.layout.is_logging_rank))
        # Decided once: one read of the checkpoint's config, and one error line rather than one per rank.
        self.cfg = cfg = decided_on_rank0(partial(adopt_start_model, with_absolute_paths(cfg), point, given_keys))
        config_dict = config_to_dict(cfg)
        config_yaml = yaml.safe_dump(config_dict, sort_keys=False, allow_unicode=True)
        setup, changed = decided_on_rank0(partial(check_data_setup, cfg, point))
        self.checkpoints = CheckpointManager(cfg, point, config_dict, config_yaml, setup, changed)
        if self.layout.is_logging_rank:
            os.makedirs(cfg.logging.run_dir, exist_ok=True)
            atomic_write_text(os.path.join(cfg.logging.run_dir, "config.yaml"), config_yaml)
        self._build()
        self.checkpoints.attach(self._unwrapped(), self.optimizer, self.scheduler, self.state)
        self.metrics = MetricsLogger(cfg, config_dict, self.layout.is_logging_rank, point.step,
                                     self.flops_per_token, self.layout.world_size, self.peak)

    # ---- build -----------------------------------------------------------------------

    def _build(self) -> None:
        from megatron.core.distributed import DistributedDataParallel
        from megatron.core.optimizer import get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
        from megatron.core.pipeline_parallel import get_forward_backward_func

        cfg, on_gpu = self.cfg, self.layout.on_gpu
        self.datasets = build_datasets(cfg)
        vocab = cfg.model.vocab_size or self.datasets.tokenizer.vocab_size
        self.vocab_size = padded_vocab_size(vocab, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tensor)
        self.spec_name = resolve_spec_name(cfg, on_gpu)
        # Packed SFT on transformer-engine: THD format, which takes one packed row per microbatch.
        self.thd = bool(cfg.data.sft_dir and cfg.data.pack and self.spec_name == "te")
        if self.thd and cfg.schedule.micro_batch_size != 1:
            raise ConfigError("packed SFT on the te spec (THD attention) needs schedule.micro_batch_size=1; "
                              "raise data.seq_length to put more conversations in each microbatch")
        if self.spec_name == "native":
            from native_megatron.ops.megatron import install_rope

            install_rope()  # before TransformerConfig: it checks that a fused RoPE is present
        self.tf_config = megatron_config.transformer_config(cfg, on_gpu, self.spec_name, training=True)
        chunks = build_model_chunks(cfg, self.tf_config, self.vocab_size, self.spec_name)
        if on_gpu:
            for c in chunks:
                c.cuda(torch.cuda.current_device())
        ddp_cfg = megatron_config.ddp_config(cfg, on_gpu)
        self.model = [DistributedDataParallel(config=self.tf_config, ddp_config=ddp_cfg, module=c,
                                              disable_bucketing=i > 0)
                      for i, c in enumerate(chunks)]
        self.optimizer = get_megatron_optimizer(megatron_config.optimizer_config(cfg, on_gpu), self.model)
        self.scheduler = OptimizerParamScheduler(self.optimizer, **megatron_config.scheduler_kwargs(cfg))
        megatron_config.wire_model_hooks(self.tf_config, self.model)
        self.forward_backward = get_forward_backward_func()
        self.shape = ModelShape.from_config(cfg.model, self.vocab_size)
        self.flops_per_token = self.shape.flops_per_token(cfg.data.seq_length)
        self.peak = peak_tflops(cfg.logging.peak_tflops)
        self.microbatches = cfg.schedule.global_batch_size // (cfg.schedule.micro_batch_size * self.layout.dp)
        logger.info("model: %s parameters (%s spec), vocab %d (padded from %d), layout TP=%d PP=%d%s DP=%d, "
                    "%d microbatches of %d", f"{self.shape.num_params():,}", self.spec_name, self.vocab_size, vocab,
                    self.layout.tp, self.layout.pp, f" VP={self.layout.vp}" if self.layout.vp else "",
                    self.layout.dp, self.microbatches, cfg.schedule.micro_batch_size)

    def _unwrapped(self) -> list[torch.nn.Module]:
        return [m.module for m in self.model]

    # ---- steps -----------------------------------------------------------------------

    def _data_iterator(self, dataset, consumed: int, total: int | None = None):
        from megatron.core import parallel_state as ps

        def make():
            return microbatch_iterator(dataset, consumed, self.cfg.schedule.micro_batch_size,
                                       ps.get_data_parallel_rank(), self.layout.dp, self.cfg.data.num_workers, total)

        # Interleaved pipelining reads each microbatch once per model chunk: one iterator
        # per chunk, all over the same samples.
        return [make() for _ in self.model] if len(self.model) > 1 else make()

    def _run_microbatches(self, data_iterator, forward_only: bool) -> tuple[float, float]:
        """Forward (and backward) over one global batch; returns (loss sum, tokens) over all ranks."""
        s = self.cfg.schedule
        reports = self.forward_backward(
            forward_step_func=partial(forward_step, device=self.device, thd=self.thd,
                                      loss_reduction=self.cfg.optim.loss_reduction), data_iterator=data_iterator,
            model=self.model if len(self.model) > 1 else self.model[0], num_microbatches=self.microbatches,
            seq_length=self.cfg.data.seq_length, micro_batch_size=s.micro_batch_size, forward_only=forward_only)
        return self._reduce_loss(reports)

    def _reduce_loss(self, reports: list[dict]) -> tuple[float, float]:
        from megatron.core import parallel_state as ps

        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        # Every TP rank of the last stage holds the same loss: count it once.
        if ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0:
            for r in reports:
                total += r["lm loss"].to(total)
        if dist.get_world_size() > 1:
            dist.all_reduce(total)
        return float(total[0]), float(total[1])

    def train_step(self, data_iterator) -> tuple[float, float]:
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss_sum, tokens = self._run_microbatches(data_iterator, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        if not ok:
            logger.warning("step %d skipped by the optimizer (inf/nan gradients)", self.state.step + 1)
        return loss_sum / max(tokens, 1.0), float(grad_norm or 0.0)

    def evaluate(self) -> float | None:
        valid = self.datasets.valid
        if valid is None:
            return None
        for m in self.model:
            m.eval()
        s = self.cfg.schedule
        it = self._data_iterator(valid, 0, total=s.eval_steps * s.global_batch_size)
        loss_sum = tokens = 0.0
        with torch.no_grad():
            for _ in range(s.eval_steps):
                ls, n = self._run_microbatches(it, forward_only=True)
                loss_sum, tokens = loss_sum + ls, tokens + n
        for m in self.model:
            m.train()
        return loss_sum / max(tokens, 1.0)

    def _validate(self) -> float | None:
        loss = self.evaluate()
        self.metrics.validation(self.state.step, loss)
        return loss

    # ---- the loop --------------------------------------------------------------------

    def train(self) -> TrainResult:
        cfg, s = self.cfg, self.cfg.schedule
        began = time.perf_counter()
        self.checkpoints.load()
        if self.checkpoints.resumed_step is not None:
            self.metrics.truncate(self.state.step)
        result = TrainResult(self.state.step)
        if s.skip_train:
            result.valid_losses[self.state.step] = self._validate()
            return result
        if cfg.checkpoint.save_initial and self.state.step == 0:
            self.checkpoints.save_initial()
        data = self._data_iterator(self.datasets.train, self.state.consumed_samples)
        tokens_per_step = s.global_batch_size * cfg.data.seq_length
        saved_step = None
        for m in self.model:
            m.train()
        while self.state.step < s.train_steps:
            start = time.perf_counter()
            loss, grad_norm = self.train_step(data)
            seconds = time.perf_counter() - start
            result.step_seconds += seconds
            result.tokens += tokens_per_step
            self.state.step += 1
            self.state.consumed_samples += s.global_batch_size
            self.state.tokens += tokens_per_step
            result.losses[self.state.step] = loss
            if not self.metrics.memory_reported:
                self.metrics.memory(self.state.step, self.model, self.optimizer, self.layout.rank)
            if self.state.step % cfg.logging.log_interval == 0 or self.state.step == s.train_steps:
                self.metrics.step(self.state.step, loss, self.optimizer.param_groups[0]["lr"], grad_norm, seconds,
                                  tokens_per_step, self.state.tokens)
            if s.eval_interval and self.state.step % s.eval_interval == 0:
                result.valid_losses[self.state.step] = self._validate()
            if cfg.checkpoint.save_interval and self.state.step % cfg.checkpoint.save_interval == 0:
                result.checkpoint, saved_step = self.checkpoints.save(), self.state.step
            if self.preemption.should_stop(self.device):
                result.stopped_by_signal = True
                break
        if s.eval_interval and self.state.step % s.eval_interval and not result.stopped_by_signal \
                and self.state.step > result.final_step:  # the last steps get a validation too
            result.valid_losses[self.state.step] = self._validate()
        must_save = result.stopped_by_signal or (cfg.checkpoint.save_at_end and self.state.step > result.final_step)
        if must_save and saved_step != self.state.step:
            result.checkpoint = self.checkpoints.save()
        result.final_step = self.state.step
        result.seconds = time.perf_counter() - began
        if result.tokens:
            result.tokens_per_s, _, result.mfu = throughput(result.tokens, result.step_seconds, self.flops_per_token,
                                                            self.layout.world_size, self.peak)
        return result

    def close(self) -> None:
        if hasattr(self, "metrics"):
            self.metrics.close()
        self._scope.close()
        self.preemption.restore()
