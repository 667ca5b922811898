"""Pre-training on megatron-core: config, model, data, loop, checkpoints, metrics."""
