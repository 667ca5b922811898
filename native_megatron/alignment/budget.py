"""What rewriting a corpus costs before it is queued: GPU-hours, wall time per array size, client cores.

Rewriting is decode-bound: the bill is output tokens divided by the engines' output tokens per second. A
rewrite is about as long as its source, so output tokens follow input tokens (``output_ratio``, 1.0 by
default). The rewrite stage splits the corpus into prepare shards and gives shard ``i`` to array task
``i % tasks``, so the wall time is that of the task with the most shards, and tasks beyond the shard count
idle. Each task's client spends CPU on every document (prompting, token counting, validation, writing); the
engine is kept busy only while the client's cores keep up with the documents the engine finishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A published rewriter throughput to plan with until you have measured your own: MLPerf Inference v5.1,
# Red Hat's submission, Llama-3.1-8B in FP8 with vLLM 0.10.0 on one H100, Offline scenario: 5,777 output
# tokens/s (Server scenario 5,103). Issue 26's target rounds it to 6,000.
PUBLISHED_TOKENS_PER_SECOND = 5_777
PUBLISHED_PARAMS = 8e9
PUBLISHED_SOURCE = ("MLPerf Inference v5.1, Red Hat's submission: Llama-3.1-8B, FP8, vLLM 0.10.0, one H100, "
                    "Offline")

# Client CPU per document with today's client (one process, a barrier per batch), measured against a
# simulated continuous-batching engine on the shipped sample (issue 26): about 33 ms a request. Measure
# yours with benchmarks/bench_rewrite.py; the streaming client targets a tenth of the engine's time.
CLIENT_SECONDS_PER_DOCUMENT = 0.033
# The client keeps up when its CPU per document is at most this share of the engine's time per document.
CLIENT_SHARE_TARGET = 0.10

# The prepare stage's output.shard_size: documents per rewrite shard, the unit an array task takes.
SHARD_SIZE = 20_000


@dataclass(frozen=True)
class RewriteWork:
    """The corpus: documents and the tokens of their text (the rewriter's tokenizer)."""

    documents: int
    input_tokens: int
    output_ratio: float = 1.0          # output tokens per input token: a rewrite is about as long as its source
    guideline_tokens: int = 500        # the system prompt each request carries, prefilled (cached by vLLM)

    @property
    def output_tokens(self) -> int:
        return round(self.input_tokens * self.output_ratio)

    @property
    def output_tokens_per_document(self) -> float:
        return self.output_tokens / self.documents

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.guideline_tokens * self.documents


@dataclass(frozen=True)
class Engine:
    """One serving engine (an array task): its GPUs and their output tokens/s each."""

    params: float
    gpus: int
    tokens_per_second_per_gpu: float
    source: str                        # where the throughput comes from: measured, published or scaled

    @property
    def tokens_per_second(self) -> float:
        return self.gpus * self.tokens_per_second_per_gpu


@dataclass(frozen=True)
class ArrayRow:
    tasks: int
    gpus: int
    busy_tasks: int                    # tasks with at least one shard
    shards_per_task: int               # the busiest task's
    wall_seconds: float
    client_cores_per_task: float


@dataclass(frozen=True)
class RewriteBudget:
    work: RewriteWork
    engine: Engine
    client_seconds_per_document: float
    shard_size: int
    rows: list[ArrayRow]

    @property
    def gpu_hours(self) -> float:
        return self.work.output_tokens / self.engine.tokens_per_second_per_gpu / 3600

    @property
    def engine_seconds_per_document(self) -> float:
        """The engine's time per document, on one of its GPUs: what the client must stay well under."""
        return self.work.output_tokens_per_document / self.engine.tokens_per_second_per_gpu

    @property
    def client_share(self) -> float:
        return self.client_seconds_per_document / self.engine_seconds_per_document

    @property
    def shards(self) -> int:
        return math.ceil(self.work.documents / self.shard_size)


def published_engine(params: float, gpus: int) -> Engine:
    """The published 8B figure, scaled by parameters for another size (decode time grows with the weights)."""
    if params == PUBLISHED_PARAMS:
        return Engine(params, gpus, PUBLISHED_TOKENS_PER_SECOND, f"published: {PUBLISHED_SOURCE}")
    scaled = PUBLISHED_TOKENS_PER_SECOND * PUBLISHED_PARAMS / params
    return Engine(params, gpus, scaled, f"estimate: the published {PUBLISHED_TOKENS_PER_SECOND:,} for an 8B model "
                                        f"({PUBLISHED_SOURCE}) scaled by 8B / {format_count(params)}; measure yours")


def gpus_per_engine(params: float, gpu_memory_gib: float) -> int:
    """The fewest GPUs (a power of two) whose memory holds the bf16 weights in half, the rest for the KV cache."""
    gpus = 1
    while 2 * params > gpus * gpu_memory_gib * 2**30 / 2:
        gpus *= 2
    return gpus


def plan_rewrite(work: RewriteWork, engine: Engine, array_sizes: list[int],
                 client_seconds_per_document: float = CLIENT_SECONDS_PER_DOCUMENT,
                 shard_size: int = SHARD_SIZE) -> RewriteBudget:
    shards = math.ceil(work.documents / shard_size)
    seconds_per_document = work.output_tokens_per_document / engine.tokens_per_second
    rows = []
    for tasks in array_sizes:
        per_task = math.ceil(shards / tasks)
        # The busiest task's documents: whole shards, the last one possibly short.
        documents = min(per_task * shard_size, work.documents)
        rows.append(ArrayRow(tasks=tasks, gpus=tasks * engine.gpus, busy_tasks=min(tasks, shards),
                             shards_per_task=per_task, wall_seconds=documents * seconds_per_document,
                             client_cores_per_task=client_seconds_per_document / seconds_per_document))
    return RewriteBudget(work, engine, client_seconds_per_document, shard_size, rows)


def format_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:,.0f}"
