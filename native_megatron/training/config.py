"""The training configuration: typed sections loaded from YAML, checked before any work.

Sections: ``model``, ``parallel``, ``data``, ``optim``, ``schedule``,
``checkpoint``, ``logging``. Rules that need the world size (tp * pp * dp)
are checked by :func:`validate_for_world` once the launcher's world size is
known; everything else is checked at load time. Each failure is one line that
says what to change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

from native_megatron.utils.config import (
    ConfigError,
    config_from_dict,
    given_keys,
    known_settings,
    resolve_precision,
    validate_config,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """A Llama-style decoder: RMSNorm, SwiGLU, rotary embeddings, GQA, untied embeddings, no biases but QKV (Qwen2)."""

    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 172
    num_attention_heads: int = 4
    # Grouped-query attention: key/value heads (Llama-3-8B: 8 for 32 query heads).
    num_query_groups: int = 2
    # None: the tokenizer's vocabulary, padded to a multiple of make_vocab_size_divisible_by * tp.
    vocab_size: int | None = None
    make_vocab_size_divisible_by: int = 128
    max_position_embeddings: int | None = None
    rotary_base: float = 500_000.0
    # Llama-3.1's long-context frequency scaling (factor 8); off for Llama-3.
    rope_scaling: bool = False
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    untie_embeddings: bool = True
    # Biases on the query/key/value projections only, as Qwen1.5/2/2.5 have (megatron-core's add_qkv_bias).
    add_qkv_bias: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    # Layer implementation: te (transformer-engine), local (megatron-core's torch
    # layers) or native (local layers with our fused RMSNorm, RoPE, SwiGLU and
    # cross-entropy from csrc/); auto: te on GPU when transformer-engine is installed,
    # else native on GPU when the extension has CUDA kernels, else local.
    spec: Literal["auto", "te", "local", "native"] = "auto"
    recompute: Literal["none", "selective", "full"] = "none"

    def validate(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                              f"model.num_query_groups ({self.num_query_groups})")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError("model: the head dimension (hidden_size / num_attention_heads) must be even "
                              "for rotary embeddings")

    @property
    def kv_channels(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    # Interleaved 1F1B: model chunks per pipeline rank (None: plain 1F1B).
    virtual_pipeline: int | None = None
    # None: world_size / (tensor * pipeline). Set it to have the launcher's world size checked.
    data: int | None = None
    # None: on whenever tensor > 1 on GPU.
    sequence_parallel: bool | None = None
    distributed_optimizer: bool = True
    # None: on GPU overlap the data-parallel grad reduce with the backward pass.
    overlap_grad_reduce: bool | None = None
    backend: Literal["auto", "nccl", "gloo"] = "auto"

    def sequence_parallel_on(self, on_gpu: bool, tensor: int | None = None) -> bool:
        """The one decision of sequence parallel: on when asked (None: on GPU) and TP > 1.

        ``tensor``: the TP size to decide for (the planner tries others), default ``self.tensor``."""
        tensor = self.tensor if tensor is None else tensor
        wanted = on_gpu if self.sequence_parallel is None else self.sequence_parallel
        return bool(wanted) and tensor > 1

    def validate(self) -> None:
        if self.tensor < 1 or self.pipeline < 1:
            raise ConfigError("parallel.tensor and parallel.pipeline must be at least 1")
        if self.virtual_pipeline is not None:
            if self.virtual_pipeline < 2:
                raise ConfigError("parallel.virtual_pipeline must be at least 2 (or unset)")
            if self.pipeline < 2:
                raise ConfigError("parallel.virtual_pipeline needs parallel.pipeline >= 2")
        if self.data is not None and self.data < 1:
            raise ConfigError("parallel.data must be at least 1")


@dataclass
class DataConfig:
    # Megatron-style blend: [weight, prefix, weight, prefix, ...] or [prefix, ...]
    # (equal weights); a prefix is PATH/NAME_text_document without .bin/.idx.
    paths: list[Any] = field(default_factory=list)
    tokenizer: str = ""
    split: str = "98,2,0"
    seq_length: int = 128
    seed: int = 1234
    # Where megatron-core caches its sample indices (default: beside the run).
    cache_dir: str | None = None
    eod_mask_loss: bool = False
    num_workers: int = 0
    # Synthetic tokens instead of files: for benchmarks and smoke tests only.
    mock: bool = False
    # Chat SFT instead of pre-training: a directory made by tools/build_sft_data.py (its train and
    # held-out splits; data.paths and data.split unused). data.tokenizer defaults to its tokenizer/.
    sft_dir: str | None = None
    # SFT: pack several conversations per sequence, attention kept within each (false: one per sequence).
    pack: bool = True

    def tokenizer_path(self) -> str:
        """data.tokenizer, else the SFT directory's copy of the tokenizer."""
        if not self.tokenizer and self.sft_dir:
            return os.path.join(self.sft_dir, "tokenizer")
        return self.tokenizer

    def validate(self) -> None:
        if self.seq_length < 2:
            raise ConfigError("data.seq_length must be at least 2")
        if self.sft_dir is not None:
            if self.mock or self.paths:
                raise ConfigError("data.sft_dir trains on its own splits: leave data.paths empty and data.mock off")
            if not os.path.isfile(os.path.join(self.sft_dir, "sft_stats.json")):
                raise ConfigError(f"data.sft_dir: {self.sft_dir} is not an SFT data directory (no sft_stats.json); "
                                  f"make one with tools/build_sft_data.py build")
            if not os.path.exists(self.tokenizer_path()):
                raise ConfigError(f"data.tokenizer: {self.tokenizer_path()} not found")
        elif not self.mock:
            if not self.paths:
                raise ConfigError("data.paths is empty: give dataset prefixes (PATH_text_document), "
                                  "optionally with weights [0.7, aligned, 0.3, raw]")
            if not self.tokenizer:
                raise ConfigError("data.tokenizer is empty: give the tokenizer the data was made with")
            prefixes = blend_prefixes(self.paths)
            for prefix in prefixes:
                for suffix in (".bin", ".idx"):
                    if not os.path.exists(str(prefix) + suffix):
                        raise ConfigError(f"data.paths: {prefix}{suffix} not found "
                                          f"(give the prefix without .bin/.idx, e.g. out/ar_text_document)")
            if not os.path.exists(self.tokenizer):
                raise ConfigError(f"data.tokenizer: {self.tokenizer} not found (a sentencepiece .model, a "
                                  f"tokenizer.json, or a directory holding one)")
        try:
            parts = [float(x) for x in self.split.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
            raise ConfigError(f"data.split {self.split!r} must be three non-negative numbers, e.g. '98,2,0'")


def blend_prefixes(paths: list[Any]) -> list[str]:
    weights, prefixes = parse_blend(paths)
    return prefixes


def parse_blend(paths: list[Any]) -> tuple[list[float] | None, list[str]]:
    """``[0.7, a, 0.3, b]`` -> ([0.7, 0.3], [a, b]); ``[a, b]`` -> (None, [a, b])."""
    if not paths:
        return None, []
    if all(isinstance(p, str) for p in paths):
        return None, [str(p) for p in paths]
    if len(paths) % 2:
        raise ConfigError("data.paths: a weighted blend alternates weight and prefix: [0.7, a, 0.3, b]")
    weights, prefixes = [], []
    for w, p in zip(paths[::2], paths[1::2]):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not isinstance(p, str):
            raise ConfigError(f"data.paths: expected weight then prefix, got {w!r}, {p!r}")
        if w < 0:
            raise ConfigError(f"data.paths: weight {w} for {p} is negative")
        weights.append(float(w))
        prefixes.append(p)
    if sum(weights) <= 0:
        raise ConfigError("data.paths: the weights add up to zero")
    return weights, prefixes


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    # The loss a step's gradient comes from. mean: over every loss token of the global batch (each token
    # weighs the same; megatron-core's per-token loss). sum: summed over tokens, divided only by the
    # microbatches x data-parallel ranks, as open-instruct's --reduce_loss sum (Tulu 3's SFT): the
    # gradient then grows with the tokens per sequence, so the learning rate means something else.
    loss_reduction: Literal["mean", "sum"] = "mean"

    def validate(self) -> None:
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim: need 0 <= min_lr ({self.min_lr}) <= lr ({self.lr})")
        if self.clip_grad < 0:
            raise ConfigError("optim.clip_grad must be >= 0 (0 disables clipping)")


@dataclass
class ScheduleConfig:
    train_steps: int = 20
    micro_batch_size: int = 2
    global_batch_size: int = 8
    warmup_steps: int = 2
    # cosine: warmup then cosine to min_lr; wsd: warmup, stable, then decay over
    # wsd_decay_steps (default: the last 10% of train_steps).
    decay_style: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    wsd_decay_steps: int | None = None
    wsd_decay_shape: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "linear"
    # Validation every eval_interval steps (0: never), over eval_steps batches.
    eval_interval: int = 0
    eval_steps: int = 2
    # Only evaluate the loaded (or initial) model on the validation split, then exit.
    skip_train: bool = False

    def validate(self) -> None:
        if self.train_steps < 1 or self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ConfigError("schedule: train_steps, micro_batch_size and global_batch_size must be >= 1")
        if not 0 <= self.warmup_steps < self.train_steps:
            raise ConfigError(f"schedule.warmup_steps ({self.warmup_steps}) must be below train_steps "
                              f"({self.train_steps})")
        if self.skip_train and self.eval_steps < 1:
            raise ConfigError("schedule.skip_train needs schedule.eval_steps >= 1")
        if self.wsd_decay_steps is not None and not 0 < self.wsd_decay_steps <= self.train_steps - self.warmup_steps:
            raise ConfigError("schedule.wsd_decay_steps must be positive and fit after the warmup")


@dataclass
class CheckpointConfig:
    # None: RUN_DIR/checkpoints. Resuming reads the latest complete checkpoint here.
    dir: str | None = None
    save_interval: int = 0
    keep_last: int = 3
    resume: bool = True
    # A checkpoint to start from with weights only (fresh optimizer and step), e.g.
    # one made by tools/convert_checkpoint.py hf-to-megatron.
    init_from: str | None = None
    save_at_end: bool = True
    # Save the initial weights to DIR/initial before the first step: ablations
    # (raw vs aligned vs blends) and other TP/PP layouts can start from the same model.
    save_initial: bool = False
    # Resume although the data setup (blend, files, split, seq_length, seed, global batch size) differs
    # from the checkpoint's: the run goes on after the checkpoint's consumed samples in the new order.
    allow_data_change: bool = False
    # Take every model setting the checkpoint (resumed or init_from) holds, even those the config sets
    # otherwise (Megatron-LM's --use-checkpoint-args); false: a differing setting given by the user stops the run.
    model_from_checkpoint: bool = False

    def validate(self) -> None:
        if self.save_interval < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint: save_interval >= 0 and keep_last >= 1 required")
        if self.init_from is not None and not os.path.isdir(self.init_from):
            raise ConfigError(f"checkpoint.init_from: {self.init_from} is not a directory")


@dataclass
class LoggingConfig:
    run_dir: str = "runs/pretrain"
    log_interval: int = 1
    tensorboard: bool = True
    wandb_project: str | None = None
    # Peak dense bf16 TFLOP/s of one accelerator for MFU; None: looked up from the GPU name.
    peak_tflops: float | None = None

    def validate(self) -> None:
        if self.log_interval < 1:
            raise ConfigError("logging.log_interval must be at least 1")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # auto: bf16 on GPU, fp32 on CPU.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: int = 1234

    def resolved_precision(self, on_gpu: bool) -> str:
        """``precision`` with "auto" resolved: bf16 on GPU, fp32 on CPU."""
        return resolve_precision(self.precision, on_gpu)

    def validate(self) -> None:
        m, p = self.model, self.parallel
        if m.num_attention_heads % p.tensor:
            raise ConfigError(f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
                              f"parallel.tensor ({p.tensor})")
        if m.num_query_groups % p.tensor:
            raise ConfigError(f"model.num_query_groups ({m.num_query_groups}) must be divisible by "
                              f"parallel.tensor ({p.tensor})")
        if m.hidden_size % p.tensor or m.ffn_hidden_size % p.tensor:
            raise ConfigError(f"model.hidden_size ({m.hidden_size}) and ffn_hidden_size ({m.ffn_hidden_size}) "
                              f"must be divisible by parallel.tensor ({p.tensor})")
        stages = p.pipeline * (p.virtual_pipeline or 1)
        if m.num_layers % stages:
            raise ConfigError(f"model.num_layers ({m.num_layers}) must be divisible by the pipeline stages "
                              f"(parallel.pipeline x virtual_pipeline = {stages})")
        mp = m.max_position_embeddings
        if mp is not None and mp < self.data.seq_length:
            raise ConfigError(f"data.seq_length ({self.data.seq_length}) exceeds model.max_position_embeddings ({mp})")

    def run_dir(self) -> str:
        return self.logging.run_dir

    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.run_dir, "checkpoints")


def validate_for_world(cfg: TrainConfig, world_size: int) -> int:
    """Check the layout against the launcher's world size; returns the data-parallel size."""
    p, s = cfg.parallel, cfg.schedule
    model_parallel = p.tensor * p.pipeline
    if world_size % model_parallel:
        raise ConfigError(f"world size {world_size} is not divisible by parallel.tensor x parallel.pipeline "
                          f"({p.tensor} x {p.pipeline} = {model_parallel})")
    dp = world_size // model_parallel
    if p.data is not None and p.data != dp:
        raise ConfigError(f"parallel: tensor x pipeline x data = {p.tensor} x {p.pipeline} x {p.data} = "
                          f"{model_parallel * p.data}, but the world size is {world_size}")
    if s.global_batch_size % (s.micro_batch_size * dp):
        raise ConfigError(f"schedule.global_batch_size ({s.global_batch_size}) must be divisible by "
                          f"micro_batch_size x data-parallel size ({s.micro_batch_size} x {dp})")
    microbatches = s.global_batch_size // (s.micro_batch_size * dp)
    if p.virtual_pipeline and microbatches % p.pipeline:
        raise ConfigError(f"interleaved pipelining needs the number of microbatches ({microbatches}) to be "
                          f"a multiple of parallel.pipeline ({p.pipeline})")
    return dp


# The settings that fix a trained model's shape and numerics. Training from a
# checkpoint (resume or init_from) takes them from the checkpoint's own config
# unless the user sets them, and then they must agree (Megatron-LM's
# --use-checkpoint-args, made the default).
CHECKPOINT_MODEL_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                         "vocab_size", "max_position_embeddings", "rotary_base", "rope_scaling", "norm_epsilon",
                         "untie_embeddings", "add_qkv_bias")


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


@dataclass(frozen=True)
class SavedConfig:
    """The settings saved with a checkpoint, typed, and the dotted keys its file holds.

    A checkpoint from an older version lacks newer keys: those hold TrainConfig's
    defaults in ``config`` but are not in ``keys``, so nothing takes them as the
    checkpoint's. ``unknown``: keys this version does not know, left out.
    """

    config: TrainConfig
    keys: frozenset[str]
    unknown: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SavedConfig:
        known, unknown = known_settings(TrainConfig, data)
        return cls(config_from_dict(TrainConfig, known), frozenset(given_keys(base=known)), tuple(unknown))

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` (dotted) that the saved file does not hold."""
        return [k for k in keys if k not in self.keys]


def adopt_checkpoint_model(cfg: TrainConfig, saved: SavedConfig, given: set[str] | None,
                           source: str) -> TrainConfig:
    """``cfg`` with the model settings of the checkpoint whose config is ``saved``.

    Only keys the checkpoint's file holds are taken. A key in ``given`` (set by the
    user; None: all keys count as set) that differs from the checkpoint is an error
    listing every such key with both values, unless ``checkpoint.model_from_checkpoint``.
    """
    conflicts, updates = [], {}
    for key in CHECKPOINT_MODEL_KEYS:
        if f"model.{key}" not in saved.keys:
            continue
        theirs, ours = getattr(saved.config.model, key), getattr(cfg.model, key)
        if _same(ours, theirs):
            continue
        if (given is None or f"model.{key}" in given) and not cfg.checkpoint.model_from_checkpoint:
            conflicts.append(f"model.{key} checkpoint={theirs!r} config={ours!r}")
        else:
            updates[key] = theirs
    if conflicts:
        raise ConfigError(f"{source} was trained with other model settings: {', '.join(conflicts)}; "
                          f"set them to the checkpoint's values, or pass --checkpoint.model_from_checkpoint=true "
                          f"to take every model setting from the checkpoint")
    if not updates:
        return cfg
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **updates))
    validate_config(cfg)
    logger.info("model settings from %s: %s", source, ", ".join(f"{k}={v!r}" for k, v in updates.items()))
    return cfg


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every path made absolute, so the config saved in a checkpoint works from any directory."""
    def absolute(path):
        return os.path.abspath(path) if isinstance(path, str) and path else path

    d, c = cfg.data, cfg.checkpoint
    data = dataclasses.replace(d, paths=[absolute(p) for p in d.paths], tokenizer=absolute(d.tokenizer_path()),
                               cache_dir=absolute(d.cache_dir), sft_dir=absolute(d.sft_dir))
    checkpoint = dataclasses.replace(c, dir=absolute(c.dir), init_from=absolute(c.init_from))
    logging_cfg = dataclasses.replace(cfg.logging, run_dir=absolute(cfg.logging.run_dir))
    return dataclasses.replace(cfg, data=data, checkpoint=checkpoint, logging=logging_cfg)
