"""The training loop, readable top to bottom: set up, resume, step, log, evaluate, save.

Built on megatron-core: GPTModel chunks wrapped in its DistributedDataParallel,
its (distributed) optimizer and LR scheduler, ``get_forward_backward_func()``
for no-pipelining / 1F1B / interleaved 1F1B, ``finalize_model_grads`` for the
gradient all-reduces, and dist_checkpointing through ``checkpointing``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import yaml

from native_megatron.training import checkpointing, megatron_config, packing
from native_megatron.training.config import TrainConfig, adopt_checkpoint_model, with_absolute_paths
from native_megatron.training.cpu_compat import cuda_to_cpu
from native_megatron.training.data import build_datasets, data_setup, data_setup_changes, microbatch_iterator
from native_megatron.training.distributed import Placement, decided_on_rank0, init_distributed
from native_megatron.training.memory import format_bytes, model_state_bytes
from native_megatron.training.metrics import ModelShape, ScalarWriter, StepMetrics, memory_gib, peak_tflops, throughput
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
    """Owns the model, optimizer, data and checkpoints of one run. ``close()`` always."""

    def __init__(self, cfg: TrainConfig, given_keys: set[str] | None = None) -> None:
        """``given_keys``: the config keys the user set (None: all), see :func:`adopt_checkpoint_model`."""
        # First: a Ctrl-C or SIGTERM during set-up (a long resume) then saves after the first step.
        self.preemption = PreemptionHandler()
        self.layout: Placement = init_distributed(cfg)
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.layout.on_gpu \
            else torch.device("cpu")
        self.state = TrainState()
        self.resume_point = decided_on_rank0(partial(self._find_resume_point, cfg))
        # Decided once: one read of the checkpoint's config, and one error line rather than one per rank.
        self.cfg = cfg = decided_on_rank0(partial(self._adopt_checkpoint_model, with_absolute_paths(cfg), given_keys))
        self.config_dict = config_to_dict(cfg)
        self.config_yaml = yaml.safe_dump(self.config_dict, sort_keys=False, allow_unicode=True)
        self.data_setup, self.data_changed = decided_on_rank0(self._check_data_setup)
        self.saved_steps: list[int] = []
        self._prepare_run_dir()
        self._build()
        self._memory_reported = False
        resumed = self.resume_point.step is not None
        self.writer = ScalarWriter(cfg.logging.run_dir, cfg.logging.tensorboard, cfg.logging.wandb_project,
                                   self.config_dict, enabled=self.layout.is_logging_rank,
                                   purge_step=self.resume_point.step + 1 if resumed else None)

    # ---- set-up --------------------------------------------------------------------

    def _find_resume_point(self, cfg: TrainConfig) -> checkpointing.ResumePoint:
        """The newest loadable checkpoint (scanned, not trusting ``latest``), before anything is built."""
        root = cfg.checkpoint_dir()
        if not cfg.checkpoint.resume:
            steps = checkpointing.checkpoint_steps(root)
            if steps:
                raise ConfigError(f"checkpoint.resume=false, but {root} already holds checkpoints "
                                  f"(iter_{steps[-1]:07d} the newest) that this run would overwrite and rotate "
                                  f"away: give a new checkpoint.dir (or logging.run_dir), or move them")
            return checkpointing.ResumePoint(None, None)
        point = checkpointing.find_resumable(root)
        if point.step is not None and point.skipped and self.layout.is_logging_rank:
            logger.warning("resuming from %s, skipping: %s", point.path, point.describe_skipped())
        return point

    def _adopt_checkpoint_model(self, cfg: TrainConfig, given_keys: set[str] | None) -> TrainConfig:
        """Model settings from the checkpoint we start from (resume, else init_from), as Megatron-LM's
        ``--use-checkpoint-args`` would take them."""
        source = self.resume_point.path or (Path(cfg.checkpoint.init_from) if cfg.checkpoint.init_from else None)
        if source is None:
            return cfg
        saved = checkpointing.read_saved_config(source)
        if saved is None:
            logger.warning("%s has no %s: its model settings cannot be checked", source, checkpointing.CONFIG_FILE)
            return cfg
        return adopt_checkpoint_model(cfg, saved, given_keys, f"checkpoint {source}")

    def _check_data_setup(self) -> tuple[dict, bool]:
        """This run's data setup, and whether it differs from the checkpoint's (allowed); one line if not allowed."""
        current = data_setup(self.cfg)
        path = self.resume_point.path
        if path is None:
            return current, False
        saved = checkpointing.read_data_setup(path)
        if saved is None:  # an older checkpoint: its config.yaml still tells all but the files
            saved_cfg = checkpointing.read_saved_config(path)
            if saved_cfg is None:
                logger.warning("%s records no data setup: cannot check that this run reads the same data", path)
                return current, False
            saved = data_setup(saved_cfg.config, with_files=False)
            current_cmp = {k: v for k, v in current.items() if not k.startswith("data.files[")}
            logger.warning("%s records no %s (older version): the dataset files are not compared", path,
                           checkpointing.DATA_SETUP_FILE)
        else:
            current_cmp = current
        changes, moved = data_setup_changes(saved, current_cmp)
        if moved:
            logger.info("the same datasets at new paths (files and weights unchanged): %s", "; ".join(moved))
        if not changes:
            return current, False
        consumed = f"the {self.resume_point.step}-step checkpoint's consumed samples"
        if not self.cfg.checkpoint.allow_data_change:
            raise ConfigError(f"resuming from {path} with another data setup: {', '.join(changes)}; put them back, "
                              f"or pass --checkpoint.allow_data_change=true to go on past {consumed} in the "
                              f"new data order")
        logger.warning("data setup changed since %s (checkpoint.allow_data_change=true): %s", path, ", ".join(changes))
        return current, True

    def _prepare_run_dir(self) -> None:
        if self.layout.is_logging_rank:
            os.makedirs(self.cfg.logging.run_dir, exist_ok=True)
            atomic_write_text(os.path.join(self.cfg.logging.run_dir, "config.yaml"), self.config_yaml)

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
        with cuda_to_cpu():  # tied embeddings under PP: megatron-core moves the last stage's copy to CUDA
            chunks = build_model_chunks(cfg, self.tf_config, self.vocab_size, self.spec_name)
        if on_gpu:
            for c in chunks:
                c.cuda(torch.cuda.current_device())
        ddp_cfg = megatron_config.ddp_config(cfg, on_gpu)
        with cuda_to_cpu():
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

    # ---- checkpoints -----------------------------------------------------------------

    def _state_dict(self, is_loading: bool, with_optimizer: bool = True, with_rng: bool = True) -> dict:
        return checkpointing.build_state_dict(self._unwrapped(), self.optimizer, self.scheduler,
                                              self.state.state_dict(), self.config_dict, is_loading,
                                              with_optimizer=with_optimizer, with_rng=with_rng)

    def save_checkpoint(self) -> str:
        root = self.cfg.checkpoint_dir()
        start = time.monotonic()
        with cuda_to_cpu():
            sd = self._state_dict(is_loading=False)
            path = checkpointing.save(root, self.state.step, sd, self.config_yaml, self.cfg.checkpoint.keep_last,
                                      self.saved_steps, tokenizer=self._tokenizer_to_copy(),
                                      data_setup=self.data_setup)
        logger.info("saved checkpoint %s in %.1fs", path, time.monotonic() - start)
        return str(path)

    def _tokenizer_to_copy(self) -> str | None:
        return None if self.cfg.data.mock or not self.cfg.data.tokenizer else self.cfg.data.tokenizer

    def save_initial_weights(self) -> str:
        path = os.path.join(self.cfg.checkpoint_dir(), "initial")
        with cuda_to_cpu():
            sd = self._state_dict(is_loading=False, with_optimizer=False, with_rng=False)
            checkpointing.save_weights(path, sd, self.config_yaml, tokenizer=self._tokenizer_to_copy())
        logger.info("saved the initial weights to %s (use it as checkpoint.init_from)", path)
        return path

    def maybe_resume(self) -> None:
        """Resume from the latest checkpoint, or start from ``init_from`` weights, or from scratch."""
        if self.resume_point.path is not None:
            self._load_full(self.resume_point.path)
            self._truncate_metrics(self.state.step)
        elif self.cfg.checkpoint.init_from:
            problem = checkpointing.checkpoint_problem(self.cfg.checkpoint.init_from)
            if problem:
                raise checkpointing.CheckpointError(f"checkpoint.init_from {self.cfg.checkpoint.init_from}: "
                                                    f"{problem}")
            self._load_weights(self.cfg.checkpoint.init_from)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics.jsonl rows past the resumed step: the killed run logged them, this run logs them again."""
        path = os.path.join(self.cfg.logging.run_dir, "metrics.jsonl")
        if not self.layout.is_logging_rank or not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
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
            atomic_write_text(path, "".join(k + "\n" for k in kept))
            logger.info("metrics.jsonl: dropped %d row(s) past step %d from the interrupted run",
                        len(lines) - len(kept), step)

    def _load_full(self, path) -> None:
        logger.info("loading checkpoint %s ...", path)
        start = time.monotonic()
        same_layout = checkpointing.saved_layout_matches(path)
        with cuda_to_cpu():
            sd = self._state_dict(is_loading=True, with_rng=same_layout)
            loaded = checkpointing.load(path, sd)
            self._load_model(loaded)
            self.optimizer.load_state_dict(loaded["optimizer"])
        self.scheduler.load_state_dict(loaded["scheduler"])
        self.state.load_state_dict(loaded["trainer"])
        if same_layout:
            checkpointing.restore_rng_state(loaded["rng_state"])
        else:
            logger.warning("checkpoint %s was saved at another TP/PP layout: weights and optimizer resharded, "
                           "RNG states (dropout) start afresh", path)
        logger.info("resumed from %s at step %d (%d samples consumed) in %.1fs", path, self.state.step,
                    self.state.consumed_samples, time.monotonic() - start)
        if self.data_changed:
            logger.warning("with the changed data setup, as Megatron-LM does: the first %d samples of the new data "
                           "order are skipped (the checkpoint's consumed count) and training goes on from sample "
                           "%d at step %d, its learning-rate schedule unchanged; samples seen before may come "
                           "again and others never", self.state.consumed_samples, self.state.consumed_samples,
                           self.state.step + 1)

    def _load_weights(self, path) -> None:
        logger.info("loading weights from %s ...", path)
        with cuda_to_cpu():
            sd = checkpointing.model_sharded_state_dict(self._unwrapped())
            loaded = checkpointing.load(path, sd)
            self._load_model(loaded)
            self.optimizer.reload_model_params()
        logger.info("initialised weights from %s (fresh optimizer, step 0)", path)

    def _load_model(self, loaded: dict) -> None:
        chunks = self._unwrapped()
        if len(chunks) == 1:
            chunks[0].load_state_dict(loaded["model"])
        else:
            for i, c in enumerate(chunks):
                c.load_state_dict(loaded[f"model{i}"])

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
        with cuda_to_cpu():
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
        with cuda_to_cpu():
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

    # ---- the loop --------------------------------------------------------------------

    def train(self) -> TrainResult:
        cfg, s = self.cfg, self.cfg.schedule
        began = time.perf_counter()
        self.maybe_resume()
        result = TrainResult(self.state.step)
        if s.skip_train:
            result.valid_losses[self.state.step] = self._log_eval(os.path.join(cfg.logging.run_dir, "metrics.jsonl"))
            return result
        if cfg.checkpoint.save_initial and self.state.step == 0:
            self.save_initial_weights()
        data = self._data_iterator(self.datasets.train, self.state.consumed_samples)
        tokens_per_step = s.global_batch_size * cfg.data.seq_length
        metrics_path = os.path.join(cfg.logging.run_dir, "metrics.jsonl")
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
            if not self._memory_reported:
                self._report_memory()
            if self.state.step % cfg.logging.log_interval == 0 or self.state.step == s.train_steps:
                self._log_step(loss, grad_norm, seconds, tokens_per_step, metrics_path)
            if s.eval_interval and self.state.step % s.eval_interval == 0:
                result.valid_losses[self.state.step] = self._log_eval(metrics_path)
            if cfg.checkpoint.save_interval and self.state.step % cfg.checkpoint.save_interval == 0:
                result.checkpoint, saved_step = self.save_checkpoint(), self.state.step
            if self.preemption.should_stop(self.device):
                result.stopped_by_signal = True
                break
        if s.eval_interval and self.state.step % s.eval_interval and not result.stopped_by_signal \
                and self.state.step > result.final_step:  # the last steps get a validation too
            result.valid_losses[self.state.step] = self._log_eval(metrics_path)
        must_save = result.stopped_by_signal or (cfg.checkpoint.save_at_end and self.state.step > result.final_step)
        if must_save and saved_step != self.state.step:
            result.checkpoint = self.save_checkpoint()
        result.final_step = self.state.step
        result.seconds = time.perf_counter() - began
        if result.tokens:
            result.tokens_per_s, _, result.mfu = throughput(result.tokens, result.step_seconds, self.flops_per_token,
                                                            self.layout.world_size, self.peak)
        return result

    def _log_step(self, loss: float, grad_norm: float, seconds: float, tokens: int, metrics_path: str) -> None:
        tok_s, tflops, mfu = throughput(tokens, seconds, self.flops_per_token, self.layout.world_size, self.peak)
        lr = self.optimizer.param_groups[0]["lr"]
        m = StepMetrics(self.state.step, loss, lr, grad_norm, tok_s, tflops, mfu, memory_gib(), seconds)
        if self.layout.is_logging_rank:
            logger.info(m.line(self.cfg.schedule.train_steps))
            self.writer.scalars(self.state.step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                                                  "perf/tokens_per_s": tok_s, "perf/tflops_per_device": tflops,
                                                  "perf/mfu": mfu, "perf/memory_gib": m.memory_gib})
            self._append_metrics(metrics_path, {"step": self.state.step, "loss": loss, "lr": lr,
                                                "grad_norm": grad_norm, "tokens_per_s": tok_s,
                                                "tflops_per_device": tflops, "mfu": mfu,
                                                "memory_gib": m.memory_gib, "tokens": self.state.tokens})

    def _report_memory(self) -> None:
        """Weights, gradient buffers and optimizer states of every rank, measured after the first step.

        Collective (all ranks call it). Rank 0 logs the largest rank's figures and
        writes them all to RUN_DIR/memory.json, which tools/plan.py's estimates are checked against.
        """
        from megatron.core import parallel_state

        self._memory_reported = True
        mine = {"rank": self.layout.rank, "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
                "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                "dp_rank": parallel_state.get_data_parallel_rank(),
                **model_state_bytes(self.model, self.optimizer)}
        ranks = [mine]
        if dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        if not self.layout.is_logging_rank:
            return
        worst = max(ranks, key=lambda r: r["weights"] + r["grads"] + r["optimizer"])
        logger.info("model state per rank (largest, rank %d): weights %s, gradients %s, optimizer states %s; "
                    "peak memory so far %.2f GiB", worst["rank"], format_bytes(worst["weights"]),
                    format_bytes(worst["grads"]), format_bytes(worst["optimizer"]), memory_gib())
        atomic_write_text(os.path.join(self.cfg.logging.run_dir, "memory.json"),
                          json.dumps({"step": self.state.step, "ranks": ranks}, indent=1))

    def _log_eval(self, metrics_path: str) -> float | None:
        loss = self.evaluate()
        if loss is not None and self.layout.is_logging_rank:
            logger.info("step %d | validation loss %.4f", self.state.step, loss)
            self.writer.scalars(self.state.step, {"valid/loss": loss})
            self._append_metrics(metrics_path, {"step": self.state.step, "valid_loss": loss})
        return loss

    @staticmethod
    def _append_metrics(path: str, row: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self.writer.close()
        self.preemption.restore()
