"""Checkpoint conversion between Hugging Face Llama or Qwen2 models and our megatron-core checkpoints."""
