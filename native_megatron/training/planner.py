"""Before queueing: does a layout fit in GPU memory, and how long will the run take?

Memory per GPU, for the worst pipeline stage, from the model shape and layout:

- **weights**: the stage's parameters on one tensor-parallel rank (linear layers
  split by TP, norms replicated, the vocabulary-parallel embedding on the first
  stage and the output layer on the last), times the parameter width.
- **gradients**: megatron-core's DDP keeps one fp32 gradient buffer per rank
  (``grad_reduce_in_fp32``): 4 bytes a parameter.
- **optimizer**: Adam's two fp32 moments (8 bytes) plus an fp32 master copy of
  16-bit weights (4 bytes); the distributed optimizer shards these over the
  data-parallel ranks (DP x CP: megatron-core's CP ranks are data-parallel for
  the weights). Per parameter this is Megatron's published table:
  bf16 weights with fp32 gradients take 18 bytes, or 6 + 12/DP with the
  distributed optimizer; fp32 takes 16, or 8 + 8/DP.
- **activations**: what the backward pass keeps per layer and token
  (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", redone for a Llama layer: RMSNorm, grouped-query
  attention, SwiGLU, no dropout), in 16-bit elements::

      4h               RMSNorm inputs and outputs (split by TP only with sequence parallel)
      2h + 2·g·d       Q, K, V (after RoPE) and the attention output   (split by TP)
      3f               SwiGLU input (gate and up) and output            (split by TP)

  plus, when attention is not a fused/flash kernel and not recomputed, the
  attention probabilities (a·s per token, fp32 softmax + 16-bit copy). Full
  recomputation keeps only each layer's input (h per token) and one layer's
  working set. The first pipeline stage holds the most microbatches in flight:
  all PP of them with 1F1B (so L layers' worth), more with interleaving.
  Context parallelism (CP) splits each sequence over CP ranks: every per-token
  term is divided by CP.
- **logits**: the last stage's output-layer logits and the fp32 cross-entropy
  buffers for one microbatch: 10 bytes per (token, vocabulary entry / TP).
- **reserve**: CUDA context, NCCL buffers and allocator fragmentation, a fixed
  allowance (``reserve_gib``).

Time: training FLOPs per token are the trainer's own formula (6 x matmul
weights + attention, :class:`~native_megatron.training.metrics.ModelShape`).
Recomputation makes the GPUs do more than that: selective recomputation redoes
the attention products' forward (4·L·s·d_attn per token), full recomputation
each layer's whole forward (2 x the layers' matmul weights + the same). The
step time is the model's FLOPs plus these at the stated utilisation of the
peak, so the MFU the trainer then reports (model FLOPs only) is that
utilisation x model / (model + recomputed) FLOPs.

Context parallelism is planned, but the trainer does not run it yet: a plan
with CP > 1 is what the layout would take, marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from native_megatron.training.config import TrainConfig
from native_megatron.training.metrics import PEAK_BF16_TFLOPS, ModelShape
from native_megatron.training.model import padded_vocab_size
from native_megatron.utils.config import ConfigError

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # what torch.cuda.get_device_properties().total_memory reports
    peak_tflops: float  # dense bf16


GPUS = {
    "h100": GPU("H100 80GB SXM", 79.2, PEAK_BF16_TFLOPS["H100"]),
    "h200": GPU("H200 141GB", 139.8, PEAK_BF16_TFLOPS["H200"]),
    "a100": GPU("A100 80GB SXM", 79.2, PEAK_BF16_TFLOPS["A100"]),
    "a100-40gb": GPU("A100 40GB", 39.4, PEAK_BF16_TFLOPS["A100"]),
}


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    vp: int | None
    micro_batch: int
    global_batch: int
    sequence_parallel: bool
    distributed_optimizer: bool
    recompute: str  # none | selective | full
    cp: int = 1     # context parallel: each sequence split over this many GPUs (not in the trainer yet)

    @property
    def gpus(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp)

    @property
    def bubble(self) -> float:
        """Idle fraction of a pipelined step: (PP - 1) / (microbatches x VP)."""
        return (self.pp - 1) / (self.microbatches * (self.vp or 1)) if self.pp > 1 else 0.0

    def describe(self) -> str:
        vp = f" (VP {self.vp})" if self.vp else ""
        cp = f" x CP {self.cp}" if self.cp > 1 else ""
        return f"TP {self.tp}{cp} x PP {self.pp}{vp} x DP {self.dp}"


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one GPU of a pipeline stage."""

    stage: int
    params: int
    weights: int
    grads: int
    optimizer: int
    optimizer_not_distributed: int
    activations: int
    activations_full_recompute: int
    activations_no_recompute: int
    logits: int
    reserve: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits + self.reserve


@dataclass(frozen=True)
class Plan:
    layout: Layout
    gpu: GPU
    stages: tuple[StageMemory, ...]
    num_params: int
    vocab_padded: int
    flops_per_token: float
    recompute_flops_per_token: float
    seq_length: int
    mfu: float  # the share of peak reached on the FLOPs done, recomputation included
    margin: float

    @property
    def worst(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def usable_bytes(self) -> float:
        return self.gpu.memory_gib * GIB * (1 - self.margin)

    @property
    def fits(self) -> bool:
        return self.worst.total <= self.usable_bytes

    @property
    def tokens_per_step(self) -> int:
        return self.layout.global_batch * self.seq_length

    @property
    def step_seconds(self) -> float:
        flops = (self.flops_per_token + self.recompute_flops_per_token) * self.tokens_per_step
        return flops / (self.layout.gpus * self.gpu.peak_tflops * 1e12 * self.mfu)

    @property
    def reported_mfu(self) -> float:
        """The MFU the trainer logs for this step time: it counts the model's FLOPs, not the recomputed ones."""
        return self.mfu * self.flops_per_token / (self.flops_per_token + self.recompute_flops_per_token)

    @property
    def runnable(self) -> bool:
        """Whether pretrain_arabic.py can run this layout (it has no context parallelism yet)."""
        return self.layout.cp == 1

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_seconds


def recompute_flops_per_token(shape: ModelShape, seq_length: int, recompute: str) -> float:
    """FLOPs per token that recomputation adds to the backward pass (hardware FLOPs, not model FLOPs)."""
    attention_forward = 4 * shape.num_layers * seq_length * shape.num_attention_heads * shape.head_dim
    if recompute == "selective":   # megatron-core recomputes the core attention (QK^T, softmax, AV)
        return float(attention_forward)
    if recompute == "full":        # every layer's forward again; the output layer is not recomputed
        layer_matmuls = shape.matmul_params() - shape.vocab_size * shape.hidden_size
        return float(2 * layer_matmuls + attention_forward)
    return 0.0


def _param_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def stage_params(cfg: TrainConfig, vocab_padded: int, tp: int, pp: int, stage: int) -> int:
    """Parameters held by one tensor-parallel rank of pipeline stage ``stage``."""
    m = cfg.model
    h, d = m.hidden_size, m.kv_channels
    linear = (h * (m.num_attention_heads * d + 2 * m.num_query_groups * d)  # fused QKV, column-parallel
              + m.num_attention_heads * d * h                                # output projection, row-parallel
              + 3 * m.ffn_hidden_size * h)                                   # SwiGLU fc1 [gate; up] and fc2
    per_layer = linear // tp + 2 * h                                         # + two RMSNorm weights, replicated
    params = m.num_layers // pp * per_layer
    embedding = vocab_padded * h // tp
    if stage == 0:
        params += embedding
    if stage == pp - 1:
        params += h  # final norm
        if m.untie_embeddings or pp > 1:  # tied: the last stage keeps its own copy, kept in sync
            params += embedding
    return params


def _in_flight(layout: Layout, stage: int) -> float:
    """Model chunks' worth of microbatch activations a stage holds at its peak, in units of its layers."""
    m = layout.microbatches
    if layout.pp == 1:
        return 1.0
    if not layout.vp:
        return float(min(m, layout.pp - stage))
    # Interleaved 1F1B (megatron-core): warm-up forwards of model chunks, then one more in flight.
    chunks = min(m * layout.vp, (layout.pp - stage - 1) * 2 + (layout.vp - 1) * layout.pp + 1)
    return chunks / layout.vp


def layer_activation_bytes(cfg: TrainConfig, layout: Layout, recompute: str, fused_attention: bool,
                           element_bytes: int) -> float:
    """Bytes one layer keeps for backward, per microbatch, on one GPU."""
    m, s, b, t = cfg.model, cfg.data.seq_length, layout.micro_batch, layout.tp
    h, f, gd = m.hidden_size, m.ffn_hidden_size, m.num_query_groups * m.kv_channels
    sp = layout.sequence_parallel and t > 1
    tokens = s * b / layout.cp
    if recompute == "full":
        return tokens * h * element_bytes / (t if sp else 1)
    norms = 4 * h / (t if sp else 1)
    split = (2 * h + 2 * gd + 3 * f) / t
    per_token = (norms + split) * element_bytes
    if not fused_attention and recompute != "selective":
        per_token += m.num_attention_heads * s / t * (4 + element_bytes)
    return tokens * per_token


def stage_memory(cfg: TrainConfig, layout: Layout, vocab_padded: int, stage: int, precision: str,
                 fused_attention: bool, reserve_gib: float) -> StageMemory:
    m = cfg.model
    e = _param_bytes(precision)
    params = stage_params(cfg, vocab_padded, layout.tp, layout.pp, stage)
    weights, grads = params * e, params * 4
    optim_full = params * (8 + (4 if e != 4 else 0))
    optim = optim_full / (layout.dp * layout.cp) if layout.distributed_optimizer else optim_full
    layers = m.num_layers // layout.pp
    in_flight = _in_flight(layout, stage)

    def acts(recompute: str) -> int:
        per_layer = layer_activation_bytes(cfg, layout, recompute, fused_attention, e)
        held = per_layer * layers * in_flight
        if recompute == "full":  # one layer's activations while it is recomputed
            held += layer_activation_bytes(cfg, layout, "selective", fused_attention, e)
        if stage == 0:  # the embedding's output
            held += cfg.data.seq_length * layout.micro_batch / layout.cp * m.hidden_size * e * in_flight
        return int(held)

    logits = 0
    if stage == layout.pp - 1:
        logits = cfg.data.seq_length * layout.micro_batch // layout.cp * vocab_padded // layout.tp * 10
    return StageMemory(stage=stage, params=params, weights=weights, grads=grads, optimizer=int(optim),
                       optimizer_not_distributed=optim_full, activations=acts(layout.recompute),
                       activations_full_recompute=acts("full"), activations_no_recompute=acts("none"),
                       logits=logits, reserve=int(reserve_gib * GIB))


def resolve_precision(cfg: TrainConfig) -> str:
    """The precision the run will have on the GPUs planned for."""
    return cfg.resolved_precision(on_gpu=True)


def attention_is_fused(cfg: TrainConfig) -> bool:
    """transformer-engine's flash/fused attention (spec te, or auto on a GPU with TE installed)."""
    return cfg.model.spec in ("auto", "te")


def plan_layout(cfg: TrainConfig, layout: Layout, vocab_size: int, gpu: GPU, mfu: float = 0.4,
                margin: float = 0.05, reserve_gib: float = 4.0) -> Plan:
    if layout.cp > 1:
        check_context_parallel(cfg, layout.cp)
    vocab_padded = padded_vocab_size(vocab_size, cfg.model.make_vocab_size_divisible_by, layout.tp)
    precision = resolve_precision(cfg)
    stages = tuple(stage_memory(cfg, layout, vocab_padded, stage, precision, attention_is_fused(cfg), reserve_gib)
                   for stage in range(layout.pp))
    shape = ModelShape.from_config(cfg.model, vocab_padded)
    return Plan(layout=layout, gpu=gpu, stages=stages,
                num_params=ModelShape.from_config(cfg.model, vocab_size).num_params(),
                vocab_padded=vocab_padded, flops_per_token=shape.flops_per_token(cfg.data.seq_length),
                recompute_flops_per_token=recompute_flops_per_token(shape, cfg.data.seq_length, layout.recompute),
                seq_length=cfg.data.seq_length, mfu=mfu, margin=margin)


def check_context_parallel(cfg: TrainConfig, cp: int) -> None:
    """What megatron-core's context parallelism needs of the model; ConfigError otherwise."""
    if cp < 1:
        raise ConfigError("--context-parallel must be at least 1")
    if cfg.data.seq_length % (2 * cp):
        raise ConfigError(f"context parallel {cp} needs data.seq_length ({cfg.data.seq_length}) divisible by "
                          f"2 x {cp} (each rank takes two balanced pieces of the causal sequence)")
    if not attention_is_fused(cfg):
        raise ConfigError("context parallelism needs transformer-engine's attention: model.spec te (or auto)")


def layout_from_config(cfg: TrainConfig, gpus: int, cp: int = 1) -> Layout:
    """The config's own layout on ``gpus`` GPUs, with context parallelism ``cp``; ConfigError if it cannot run there."""
    from native_megatron.training.config import validate_for_world

    p, s = cfg.parallel, cfg.schedule
    if gpus % (p.tensor * cp * p.pipeline):
        raise ConfigError(f"world size {gpus} is not divisible by parallel.tensor x context parallel x "
                          f"parallel.pipeline ({p.tensor} x {cp} x {p.pipeline})")
    dp = validate_for_world(cfg, gpus // cp)
    return Layout(tp=p.tensor, pp=p.pipeline, dp=dp, vp=p.virtual_pipeline, micro_batch=s.micro_batch_size,
                  global_batch=s.global_batch_size, sequence_parallel=p.sequence_parallel_on(on_gpu=True),
                  distributed_optimizer=p.distributed_optimizer, recompute=cfg.model.recompute, cp=cp)


def candidate_layouts(cfg: TrainConfig, nodes: int, gpus_per_node: int, cp: int = 1) -> list[Layout]:
    """Every TP x PP x DP (at context parallelism ``cp``) that the model, the batch and the machine allow.

    TP stays inside a node. Each layout is what the config becomes with the overrides of
    :func:`layout_overrides`: its sequence parallelism and distributed optimizer, and its
    virtual pipeline where that PP allows it (then also without).
    """
    m, s = cfg.model, cfg.schedule
    world = nodes * gpus_per_node
    out = []
    for tp in (t for t in range(1, gpus_per_node + 1) if gpus_per_node % t == 0):
        if m.num_query_groups % tp or m.num_attention_heads % tp or m.ffn_hidden_size % tp:
            continue
        for pp in (p for p in range(1, m.num_layers + 1) if m.num_layers % p == 0):
            if world % (tp * cp * pp):
                continue
            dp = world // (tp * cp * pp)
            if s.global_batch_size % (s.micro_batch_size * dp):
                continue
            microbatches = s.global_batch_size // (s.micro_batch_size * dp)
            vp = cfg.parallel.virtual_pipeline
            vps = [vp, None] if vp and pp > 1 and m.num_layers % (pp * vp) == 0 and microbatches % pp == 0 \
                else [None]
            for v in vps:
                out.append(Layout(tp=tp, pp=pp, dp=dp, vp=v, micro_batch=s.micro_batch_size,
                                  global_batch=s.global_batch_size,
                                  sequence_parallel=cfg.parallel.sequence_parallel_on(True, tp),
                                  distributed_optimizer=cfg.parallel.distributed_optimizer,
                                  recompute=cfg.model.recompute, cp=cp))
    # Fewest GPUs per model replica first (most data parallelism, least communication);
    # at equal size prefer tensor parallelism inside a node over pipeline bubbles.
    return sorted(out, key=lambda lay: (lay.tp * lay.pp, lay.pp, lay.tp))


def layout_overrides(cfg: TrainConfig, layout: Layout) -> list[str]:
    """The ``--section.key=value`` settings that make ``cfg`` run ``layout`` (context parallelism aside)."""
    out = [f"--parallel.tensor={layout.tp}", f"--parallel.pipeline={layout.pp}"]
    if layout.vp != cfg.parallel.virtual_pipeline:
        out.append(f"--parallel.virtual_pipeline={layout.vp or 'null'}")
    if cfg.parallel.data is not None and cfg.parallel.data != layout.dp:
        out.append(f"--parallel.data={layout.dp}")
    out.append(f"--model.recompute={layout.recompute}")
    return out


def suggest(cfg: TrainConfig, nodes: int, gpus_per_node: int, vocab_size: int, gpu: GPU, mfu: float = 0.4,
            margin: float = 0.05, reserve_gib: float = 4.0, cp: int = 1) -> Plan | None:
    """The smallest layout that fits, with the margin, trying the config's recomputation first, then full
    recomputation. Applying :func:`layout_overrides` to the config gives this very layout."""
    layouts = candidate_layouts(cfg, nodes, gpus_per_node, cp)
    for recompute in dict.fromkeys([cfg.model.recompute, "full"]):
        for layout in layouts:
            plan = plan_layout(cfg, replace(layout, recompute=recompute), vocab_size, gpu, mfu, margin, reserve_gib)
            if plan.fits:
                return plan
    return None


def parse_tokens(text: str) -> int:
    """'10B' -> 10**10, '500M', '2T', '1e9', '123456'."""
    units = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
    t = text.strip().upper().replace("_", "").replace(",", "")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise ConfigError(f"--tokens {text!r}: give a count like 10B, 500M or 2T") from None


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
