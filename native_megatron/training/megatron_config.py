"""The one place where our TrainConfig becomes megatron-core's configs.

TransformerConfig (model + parallel layout), DistributedDataParallelConfig,
OptimizerConfig, and the LR schedule's arguments. Device-dependent choices
(fusions that need CUDA kernels, bf16, sequence parallel, gloo's lack of
batched p2p) are made here from ``on_gpu``, not scattered through the trainer.

Every TransformerConfig field is set when it is built; the one exception is
:func:`wire_model_hooks`, for the callables megatron-core reads from the config
but that exist only once the DDP-wrapped models do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from native_megatron.training.config import TrainConfig


def params_dtype(cfg: TrainConfig, on_gpu: bool) -> torch.dtype:
    precision = cfg.resolved_precision(on_gpu)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def transformer_config(cfg: TrainConfig, on_gpu: bool, spec_name: str = "local", *, training: bool = False,
                       initialize: bool = True):
    """megatron-core TransformerConfig for a Llama-style model under this layout.

    ``training``: the trainer's settings (per-token loss, megatron-core's grad finalisation).
    ``initialize``: False when every weight is overwritten afterwards (conversion).
    The native spec needs :func:`native_megatron.ops.megatron.install_rope` called first.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    native = {}
    if spec_name == "native":
        from native_megatron.ops.megatron import native_config_overrides

        native = native_config_overrides()
    hooks = {}
    if training:
        from megatron.core.distributed import finalize_model_grads

        hooks = dict(calculate_per_token_loss=True, finalize_model_grads_func=finalize_model_grads)

    m, p = cfg.model, cfg.parallel
    dtype = params_dtype(cfg, on_gpu)
    recompute = {}
    if m.recompute == "selective":
        recompute = dict(recompute_granularity="selective")
    elif m.recompute == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    kwargs = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        layernorm_epsilon=m.norm_epsilon,
        init_method_std=m.init_method_std,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        tensor_model_parallel_size=p.tensor,
        pipeline_model_parallel_size=p.pipeline,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline,
        sequence_parallel=p.sequence_parallel_on(on_gpu),
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # On CPU, build the full weight and slice it per tensor-parallel rank: the
        # same initial model for any TP size (and no CUDA RNG needed).
        use_cpu_initialization=not on_gpu,
        perform_initialization=initialize,
        # Fused kernels need CUDA (and apex or TE for some); the torch paths are exact.
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        # Its causal kernel ignores an explicit mask, which packed SFT passes on the local and native specs.
        masked_softmax_fusion=on_gpu and not (cfg.data.sft_dir and cfg.data.pack and spec_name != "te"),
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        attention_softmax_in_fp32=True,
        # gloo has no batched isend/irecv.
        batch_p2p_comm=on_gpu,
        deallocate_pipeline_outputs=on_gpu,
        **recompute,
        **hooks,
    )
    kwargs.update(native)
    return TransformerConfig(**kwargs)


def wire_model_hooks(tf_config, models: list) -> None:
    """Give ``tf_config`` the callables that need the built DDP models (as Megatron-LM's training.py does).

    The pipeline schedules read ``no_sync_func`` from the config; with several model chunks
    (interleaved 1F1B) it must disable grad sync on each of them. One chunk needs nothing."""
    if len(models) > 1:
        tf_config.no_sync_func = [m.no_sync for m in models]


def ddp_config(cfg: TrainConfig, on_gpu: bool):
    from megatron.core.distributed import DistributedDataParallelConfig

    overlap = cfg.parallel.overlap_grad_reduce
    if overlap is None:
        overlap = on_gpu
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap,
        overlap_param_gather=False,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        check_for_nan_in_grad=True,
    )


def optimizer_config(cfg: TrainConfig, on_gpu: bool):
    from megatron.core.optimizer import OptimizerConfig

    o = cfg.optim
    dtype = params_dtype(cfg, on_gpu)
    return OptimizerConfig(
        optimizer="adam",  # megatron-core's adam is AdamW (decoupled weight decay)
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )


def scheduler_kwargs(cfg: TrainConfig) -> dict:
    """Arguments for megatron-core's OptimizerParamScheduler (steps are optimizer steps)."""
    s, o = cfg.schedule, cfg.optim
    style = {"cosine": "cosine", "linear": "linear", "constant": "constant", "wsd": "WSD"}[s.decay_style]
    kwargs = dict(init_lr=0.0 if s.warmup_steps else o.lr, max_lr=o.lr, min_lr=o.min_lr,
                  lr_warmup_steps=s.warmup_steps, lr_decay_steps=s.train_steps, lr_decay_style=style,
                  start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=s.train_steps,
                  wd_incr_style="constant", use_checkpoint_opt_param_scheduler=True,
                  override_opt_param_scheduler=False)
    if style == "WSD":
        kwargs["wsd_decay_steps"] = s.wsd_decay_steps or max(1, s.train_steps // 10)
        kwargs["lr_wsd_decay_style"] = s.wsd_decay_shape
    return kwargs
