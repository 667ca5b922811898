#!/usr/bin/env python3
"""Convert Llama and Qwen2 checkpoints between Hugging Face and native_megatron: ``nm-convert``.

    # HF -> Megatron weights for continued pre-training (then: --checkpoint.init_from=ckpt/llama3_8b)
    python tools/convert_checkpoint.py hf-to-megatron --hf /models/Meta-Llama-3-8B --out ckpt/llama3_8b --tp 8
    # large models: one process per TP x PP rank, each holding only its shard
    torchrun --nproc-per-node 8 tools/convert_checkpoint.py hf-to-megatron --hf ... --out ... --tp 4 --pp 2
    # any checkpoint (any TP/PP it was saved at) -> HF, for transformers and vLLM
    python tools/convert_checkpoint.py megatron-to-hf --ckpt runs/x/checkpoints/iter_0010000 --out hf/x \\
        --tokenizer /models/Meta-Llama-3-8B

The command line lives in native_megatron/cli/convert.py.
"""

import sys

from native_megatron.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
