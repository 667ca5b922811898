"""Before queueing: does a layout fit in GPU memory, and how long will the run take?

Memory per GPU, for the worst pipeline stage, from the model shape and layout:

- **weights**: the stage's parameters on one tensor-parallel rank (linear layers
  split by TP, norms replicated, the vocabulary-parallel embedding on the first
  stage and the output layer on the last), times the parameter width.
- **gradients**: megatron-core's DDP keeps one fp32 gradient buffer per rank
  (``grad_reduce_in_fp32``): 4 bytes a parameter.
- **optimizer**: Adam's two fp32 moments (8 bytes) plus an fp32 master copy of
  16-bit weights (4 bytes); the distributed optimizer shards these over the
  data-parallel ranks. Per parameter this is Megatron's published table:
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
- **logits**: the last stage's output-layer logits and the fp32 cross-entropy
  buffers for one microbatch: 10 bytes per (token, vocabulary entry / TP).
- **reserve**: CUDA context, NCCL buffers and allocator fragmentation, a fixed
  allowance (``reserve_gib``).

Time: training FLOPs per token are the trainer's own formula (6 x matmul
weights + attention, :class:`~native_megatron.training.metrics.ModelShape`), so
the step time at a stated MFU is what the trainer's MFU column will then show.
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

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp)

    @property
    def bubble(self) -> float:
        """Idle fraction of a pipelined step: (PP - 1) / (microbatches x VP)."""
        return (self.pp - 1) / (self.microbatches * (self.vp or 1)) if self.pp > 1 else 0.0

    def describe(self) -> str:
        vp = f" (VP {self.vp})" if self.vp else ""
        return f"TP {self.tp} x PP {self.pp}{vp} x DP {self.dp}"


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
    seq_length: int
    mfu: float
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
        flops = self.flops_per_token * self.tokens_per_step
        return flops / (self.layout.gpus * self.gpu.peak_tflops * 1e12 * self.mfu)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_seconds


def model_shape(cfg: TrainConfig, vocab_size: int) -> ModelShape:
    m = cfg.model
    return ModelShape(m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
                      vocab_size, tied_embeddings=not m.untie_embeddings)


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
    tokens = s * b
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
    optim = optim_full / layout.dp if layout.distributed_optimizer else optim_full
    layers = m.num_layers // layout.pp
    in_flight = _in_flight(layout, stage)

    def acts(recompute: str) -> int:
        per_layer = layer_activation_bytes(cfg, layout, recompute, fused_attention, e)
        held = per_layer * layers * in_flight
        if recompute == "full":  # one layer's activations while it is recomputed
            held += layer_activation_bytes(cfg, layout, "selective", fused_attention, e)
        if stage == 0:  # the embedding's output
            held += cfg.data.seq_length * layout.micro_batch * m.hidden_size * e * in_flight
        return int(held)

    logits = 0
    if stage == layout.pp - 1:
        logits = cfg.data.seq_length * layout.micro_batch * vocab_padded // layout.tp * 10
    return StageMemory(stage=stage, params=params, weights=weights, grads=grads, optimizer=int(optim),
                       optimizer_not_distributed=optim_full, activations=acts(layout.recompute),
                       activations_full_recompute=acts("full"), activations_no_recompute=acts("none"),
                       logits=logits, reserve=int(reserve_gib * GIB))


def resolve_precision(cfg: TrainConfig) -> str:
    return "bf16" if cfg.precision == "auto" else cfg.precision


def attention_is_fused(cfg: TrainConfig) -> bool:
    """transformer-engine's flash/fused attention (spec te, or auto on a GPU with TE installed)."""
    return cfg.model.spec in ("auto", "te")


def plan_layout(cfg: TrainConfig, layout: Layout, vocab_size: int, gpu: GPU, mfu: float = 0.4,
                margin: float = 0.05, reserve_gib: float = 4.0) -> Plan:
    vocab_padded = padded_vocab_size(vocab_size, cfg.model.make_vocab_size_divisible_by, layout.tp)
    precision = resolve_precision(cfg)
    stages = tuple(stage_memory(cfg, layout, vocab_padded, stage, precision, attention_is_fused(cfg), reserve_gib)
                   for stage in range(layout.pp))
    shape = model_shape(cfg, vocab_padded)
    return Plan(layout=layout, gpu=gpu, stages=stages, num_params=model_shape(cfg, vocab_size).num_params(),
                vocab_padded=vocab_padded, flops_per_token=shape.flops_per_token(cfg.data.seq_length),
                seq_length=cfg.data.seq_length, mfu=mfu, margin=margin)


def layout_from_config(cfg: TrainConfig, gpus: int) -> Layout:
    """The config's own layout on ``gpus`` GPUs; ConfigError if it cannot run there."""
    from native_megatron.training.config import validate_for_world

    dp = validate_for_world(cfg, gpus)
    p, s = cfg.parallel, cfg.schedule
    sp = bool(p.sequence_parallel if p.sequence_parallel is not None else p.tensor > 1) and p.tensor > 1
    return Layout(tp=p.tensor, pp=p.pipeline, dp=dp, vp=p.virtual_pipeline, micro_batch=s.micro_batch_size,
                  global_batch=s.global_batch_size, sequence_parallel=sp,
                  distributed_optimizer=p.distributed_optimizer, recompute=cfg.model.recompute)


def candidate_layouts(cfg: TrainConfig, nodes: int, gpus_per_node: int) -> list[Layout]:
    """Every TP x PP x DP that the model, the batch and the machine allow; TP stays inside a node."""
    m, s = cfg.model, cfg.schedule
    world = nodes * gpus_per_node
    out = []
    for tp in (t for t in range(1, gpus_per_node + 1) if gpus_per_node % t == 0):
        if m.num_query_groups % tp or m.num_attention_heads % tp or m.ffn_hidden_size % tp:
            continue
        for pp in (p for p in range(1, m.num_layers + 1) if m.num_layers % p == 0):
            if world % (tp * pp):
                continue
            dp = world // (tp * pp)
            if s.global_batch_size % (s.micro_batch_size * dp):
                continue
            base = Layout(tp=tp, pp=pp, dp=dp, vp=None, micro_batch=s.micro_batch_size,
                          global_batch=s.global_batch_size, sequence_parallel=tp > 1,
                          distributed_optimizer=cfg.parallel.distributed_optimizer, recompute=cfg.model.recompute)
            out.append(base)
    # Fewest GPUs per model replica first (most data parallelism, least communication);
    # at equal size prefer tensor parallelism inside a node over pipeline bubbles.
    return sorted(out, key=lambda lay: (lay.tp * lay.pp, lay.pp, lay.tp))


def suggest(cfg: TrainConfig, nodes: int, gpus_per_node: int, vocab_size: int, gpu: GPU, mfu: float = 0.4,
            margin: float = 0.05, reserve_gib: float = 4.0) -> Plan | None:
    """The smallest layout that fits, trying the config's recomputation first, then full recomputation."""
    layouts = candidate_layouts(cfg, nodes, gpus_per_node)
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
