"""Settings of the rewriting stage: backend, model, guidelines, chunking, sampling, failure policy, work split."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from native_megatron.utils.config import ConfigError
from native_megatron.utils.openai_client import OpenAIConfig  # rewrite.openai: the shared client's settings
from native_megatron.utils.slurm import work_share


@dataclass
class SamplingConfig:
    temperature: float = 0.2
    top_p: float = 0.9
    # Upper bound on generated tokens per chunk; a rewrite that hits it is "truncated".
    max_new_tokens: int = 3072
    seed: int | None = 1234

    def validate(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ConfigError("sampling: need temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1")


@dataclass
class RetrySamplingConfig:
    """The retry's sampling: each key left unset (null) is the first attempt's, except the seed, which
    is the first attempt's + 1, so that the retry draws another sample rather than repeating it."""

    # null: sampling.temperature
    temperature: float | None = None
    # null: sampling.top_p
    top_p: float | None = None
    # null: sampling.max_new_tokens
    max_new_tokens: int | None = None
    # null: sampling.seed + 1 (no seed when sampling.seed is null)
    seed: int | None = None

    def resolve(self, first: SamplingConfig) -> SamplingConfig:
        def pick(name: str):
            mine = getattr(self, name)
            return getattr(first, name) if mine is None else mine

        seed = self.seed if self.seed is not None else None if first.seed is None else first.seed + 1
        return SamplingConfig(pick("temperature"), pick("top_p"), pick("max_new_tokens"), seed)


@dataclass
class VLLMConfig:
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    # Documents per llm.chat call (their chunks, and then their retries, in one call): enough that the
    # engine's batch stays full while a call's slowest requests finish.
    documents_per_call: int = 4096


@dataclass
class HFConfig:
    device: str = "auto"       # auto: cuda when available, else cpu
    dtype: str = "auto"        # auto: bf16 on GPU, fp32 on CPU
    batch_size: int = 8




@dataclass
class RewriteConfig:
    # none: no rewriting (the raw baseline); vllm / openai / hf: see docs/alignment.md.
    backend: Literal["none", "vllm", "openai", "hf"] = "none"
    model: str = ""
    # Tokenizer used to count tokens for chunking; default: the model's (a local
    # directory, or the vLLM engine's). Without one, 1 token per 3 characters is assumed.
    tokenizer: str | None = None
    guidelines: str = ""
    # Documents longer than this (in rewriter tokens) are rewritten in pieces.
    max_input_tokens: int = 2048
    # Documents handed to the hf backend (or the fakes) per call; vllm uses vllm.documents_per_call and
    # openai streams (see docs/alignment.md, "Streaming").
    batch_size: int = 64
    # Processes for the client's CPU work while streaming (chunking, prompts, validation): 0 does it in this
    # process; null: 1 for a fleet of 2,048+ requests in flight when this machine has a core for it, else 0.
    client_workers: int | None = None
    # Seconds between progress log lines when stderr is not a terminal (batch jobs); a bar otherwise.
    progress_interval_s: float = 30.0
    # A rewrite that fails validation: keep the raw text, drop the document, or
    # retry once with retry_sampling and then apply after_retry.
    on_failure: Literal["keep_raw", "drop", "retry"] = "retry"
    after_retry: Literal["keep_raw", "drop"] = "keep_raw"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # The retry's sampling; a key left unset (null) is the first attempt's (see RetrySamplingConfig).
    retry_sampling: RetrySamplingConfig = field(default_factory=RetrySamplingConfig)
    # A run that rewrites less than this share of the documents it sends fails (exit 4) before
    # tokenizing, its shards kept: a wrong model, template or token limit, not the corpus. 0 accepts any.
    min_rewritten_fraction: float = 0.5
    # Replace PII (native_megatron.data.pii) before a document goes to an openai backend.
    redact_pii: bool = True
    # This process's share of the shards: shard i goes to rank i % world_size. Unset:
    # from a SLURM job array (SLURM_ARRAY_TASK_ID / _COUNT) or SLURM tasks, else 0 of 1.
    rank: int | None = None
    world_size: int | None = None
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    hf: HFConfig = field(default_factory=HFConfig)

    def validate(self) -> None:
        if self.backend == "none":
            return
        if not self.model:
            raise ConfigError("--rewrite needs --model (a model directory, or the served model name for openai)")
        if not self.guidelines:
            raise ConfigError("--rewrite needs --guidelines (e.g. examples/guidelines/native_alignment_en.yaml)")
        if not os.path.isfile(self.guidelines):
            raise ConfigError(f"guidelines file not found: {self.guidelines}")
        if self.max_input_tokens < 16 or self.batch_size < 1:
            raise ConfigError("rewrite: max_input_tokens >= 16 and batch_size >= 1 required")
        if (self.client_workers is not None and self.client_workers < 0) or self.progress_interval_s <= 0 \
                or self.vllm.documents_per_call < 1:
            raise ConfigError("rewrite: client_workers >= 0, progress_interval_s > 0 and "
                              "vllm.documents_per_call >= 1 required")
        if not 0 <= self.min_rewritten_fraction <= 1:
            raise ConfigError("rewrite.min_rewritten_fraction is a share between 0 and 1 (0 accepts any run)")
        if self.on_failure == "retry":
            retry = self.retry()
            try:
                retry.validate()
            except ConfigError as exc:
                raise ConfigError(f"retry_{exc}") from None
            if retry.temperature == 0 and self.sampling.temperature == 0 \
                    and retry.max_new_tokens == self.sampling.max_new_tokens:
                raise ConfigError("rewrite.on_failure=retry at temperature 0 would repeat the first attempt word "
                                  "for word: set --rewrite.retry_sampling.temperature (e.g. 0.7), or "
                                  "--rewrite.on_failure=keep_raw or drop")
        rank, world = self.work_split()
        if not 0 <= rank < world:
            raise ConfigError(f"rewrite: rank {rank} is not in [0, world_size={world})")

    def retry(self) -> SamplingConfig:
        """The sampling of a retry: ``retry_sampling`` over ``sampling``."""
        return self.retry_sampling.resolve(self.sampling)

    def work_split(self) -> tuple[int, int]:
        """(rank, world size) for the shard split, from the config or SLURM."""
        if self.world_size is not None:
            return (self.rank or 0), self.world_size
        share = work_share()
        if share is not None:
            return share
        return (self.rank or 0), 1
