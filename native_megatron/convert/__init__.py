"""Checkpoint conversion between Hugging Face Llama and our megatron-core checkpoints."""
