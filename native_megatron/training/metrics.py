"""Throughput and model FLOPs utilisation, from a stated FLOPs-per-token formula.

Training FLOPs per token (forward + backward = 3 x forward; no recomputation
counted, so MFU is *model* FLOPs utilisation as in PaLM, Appendix B):

    6 * N_matmul + 12 * L * s * d_attn

where ``N_matmul`` counts the weights that take part in matrix multiplies
(per layer: Q and O ``2*h*h_q``, K and V ``2*h*g*d``, SwiGLU ``3*h*f``; plus the
output layer ``V*h``; the embedding lookup is free), ``L`` layers, ``s`` the
sequence length and ``d_attn = heads * head_dim`` (the QK^T and AV products,
counted over the full, not causal, square as is customary).
"""

from __future__ import annotations

import logging
import resource
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Peak dense bf16 TFLOP/s per accelerator (datasheets, without sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,   # SXM; the PCIe card is 756
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
}


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, model, vocab_size: int) -> ModelShape:
        """The shape of ``model`` (a ModelConfig) with a ``vocab_size`` vocabulary (padded or not)."""
        m = model
        return cls(m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
                   vocab_size, tied_embeddings=not m.untie_embeddings)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attn = 2 * h * (self.num_attention_heads * d) + 2 * h * (self.num_query_groups * d)
        mlp = 3 * h * self.ffn_hidden_size
        norms = 2 * h
        return attn + mlp + norms

    def num_params(self) -> int:
        """All parameters (embeddings included, counted once when tied)."""
        embed = self.vocab_size * self.hidden_size
        output = 0 if self.tied_embeddings else embed
        return self.num_layers * self.layer_params() + embed + output + self.hidden_size

    def matmul_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        per_layer = (2 * h * (self.num_attention_heads * d) + 2 * h * (self.num_query_groups * d)
                     + 3 * h * self.ffn_hidden_size)
        return self.num_layers * per_layer + self.vocab_size * h

    def flops_per_token(self, seq_length: int) -> float:
        """Training FLOPs per token (see the module docstring)."""
        attention = 12 * self.num_layers * seq_length * self.num_attention_heads * self.head_dim
        return 6 * self.matmul_params() + attention


def peak_tflops(override: float | None = None) -> float | None:
    """Peak bf16 TFLOP/s of this process's accelerator; None on CPU or an unknown GPU."""
    if override:
        return override
    import torch  # here, not at the top: tools/plan.py reads this module's tables without torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    logger.warning("unknown GPU %r: set logging.peak_tflops to get MFU", name)
    return None


def memory_gib() -> float:
    """Peak memory of this process: GPU allocator peak, or resident set size on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


@dataclass
class StepMetrics:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tflops_per_device: float
    mfu: float | None
    memory_gib: float
    seconds: float

    def line(self, total_steps: int) -> str:
        mfu = f"{100 * self.mfu:5.1f}%" if self.mfu is not None else "  n/a"
        return (f"step {self.step:>6}/{total_steps} | loss {self.loss:8.4f} | lr {self.lr:.3e} | "
                f"grad norm {self.grad_norm:7.3f} | {self.tokens_per_s:10,.0f} tok/s | "
                f"{self.tflops_per_device:7.2f} TFLOP/s/dev | MFU {mfu} | mem {self.memory_gib:6.2f} GiB | "
                f"{1000 * self.seconds:7.1f} ms")


def throughput(tokens: int, seconds: float, flops_per_token: float, world_size: int,
               peak: float | None) -> tuple[float, float, float | None]:
    """(tokens/s, achieved TFLOP/s per device, MFU or None)."""
    tok_s = tokens / seconds if seconds > 0 else 0.0
    tflops = tok_s * flops_per_token / world_size / 1e12
    return tok_s, tflops, (tflops / peak if peak else None)


class ScalarWriter:
    """TensorBoard (when installed) and W&B (when asked for) scalars, from rank 0 only."""

    def __init__(self, run_dir: str, tensorboard: bool, wandb_project: str | None, config: dict,
                 enabled: bool, purge_step: int | None = None) -> None:
        """``purge_step``: on a resume, the first step this run logs; TensorBoard hides older events from there."""
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=f"{run_dir}/tensorboard", purge_step=purge_step)
            except ImportError:
                logger.warning("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
        if wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=wandb_project, dir=run_dir, config=config, resume="allow")
            except ImportError:
                logger.warning("wandb is not installed: no W&B logging (pip install wandb)")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in values.items():
                if value is not None:
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in values.items() if v is not None}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
