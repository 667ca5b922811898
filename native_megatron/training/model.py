"""Build the Llama-style megatron-core GPTModel for this rank's pipeline stage(s)."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from native_megatron.training.config import TrainConfig
from native_megatron.utils.config import ConfigError

if TYPE_CHECKING:  # the planner reads padded_vocab_size without torch
    import torch

logger = logging.getLogger(__name__)


def padded_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel: int) -> int:
    """Round the vocabulary up so that every tensor-parallel shard of the embedding is equal."""
    multiple = divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


def have_transformer_engine() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_spec_name(cfg: TrainConfig, on_gpu: bool) -> str:
    name = cfg.model.spec
    if name == "auto":
        # On GPUs: transformer-engine when installed, else our fused CUDA kernels when built.
        # On CPU the local spec: torch's vectorised CPU ops beat our plain C++ loops, which
        # exist for correctness (tests) rather than speed.
        from native_megatron.ops import extension_available

        if on_gpu and have_transformer_engine():
            name = "te"
        elif on_gpu and extension_available("cuda"):
            name = "native"
        else:
            return "local"
    if name == "native":
        from native_megatron.ops import describe

        logger.info("model.spec=native: fused ops from %s", describe())
    if name == "te" and not (on_gpu and have_transformer_engine()):
        raise ConfigError("model.spec=te needs a GPU and transformer-engine (pip install -e '.[gpu]'); "
                          "use model.spec=local")
    return name


def layer_spec(name: str, tf_config=None, vp_stage: int | None = None):
    """The spec that chooses the layer implementations."""
    from megatron.core.models.gpt import gpt_layer_specs

    if name == "native":
        from megatron.core.transformer.transformer_block import get_num_layers_to_build

        from native_megatron.ops.megatron import native_block_spec

        return native_block_spec(get_num_layers_to_build(tf_config, vp_stage=vp_stage))
    if name == "te":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    if name == "local":
        return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    raise ConfigError(f"model.spec={name!r} is not available")


def build_model_chunks(cfg: TrainConfig, tf_config, vocab_size: int, spec_name: str) -> list[torch.nn.Module]:
    """GPTModel chunk(s) for this rank: one, or one per virtual stage with interleaving."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_model import GPTModel

    m = cfg.model
    vp = cfg.parallel.virtual_pipeline
    model_class = GPTModel
    if spec_name == "native":
        from native_megatron.ops.megatron import native_gpt_model_class

        model_class = native_gpt_model_class()
    chunks = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        model = model_class(
            config=tf_config,
            transformer_layer_spec=layer_spec(spec_name, tf_config, stage),
            vocab_size=vocab_size,
            max_sequence_length=m.max_position_embeddings or cfg.data.seq_length,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=not m.untie_embeddings,
            position_embedding_type="rope",
            rotary_percent=1.0,
            rotary_base=m.rotary_base,
            rope_scaling=m.rope_scaling,
            vp_stage=stage,
        )
        chunks.append(model)
    return chunks
