"""Raw text to Megatron indexed datasets: read, clean, deduplicate, tokenize, write."""
