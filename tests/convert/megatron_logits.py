"""Load a checkpoint into a single-process megatron-core GPTModel (TP=1, PP=1, fp32) and save its
logits for a batch of token ids: `python megatron_logits.py CKPT IDS.pt OUT.pt --model.x=...`."""

import sys

import torch

from native_megatron.training import checkpointing, megatron_config
from native_megatron.training.config import TrainConfig
from native_megatron.training.cpu_compat import cuda_to_cpu
from native_megatron.training.distributed import destroy_distributed, init_distributed
from native_megatron.training.model import build_model_chunks, padded_vocab_size
from native_megatron.utils.config import load_config, split_overrides


def main():
    rest, overrides = split_overrides(sys.argv[1:])
    ckpt, ids_path, out_path = rest
    cfg = load_config(TrainConfig, None, overrides, base={"data.mock": True, "data.paths": [], "precision": "fp32",
                                                          "model.spec": "local", "data.seq_length": 16})
    init_distributed(cfg)
    try:
        vocab = padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, 1)
        (model,) = build_model_chunks(cfg, megatron_config.transformer_config(cfg, on_gpu=False), vocab, "local")
        loaded = checkpointing.load(ckpt, checkpointing.model_sharded_state_dict([model]))
        model.load_state_dict(loaded["model"])
        model.eval()
        ids = torch.load(ids_path)
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        with torch.no_grad(), cuda_to_cpu():
            logits = model(ids, pos, attention_mask=None)
        torch.save(logits[..., : cfg.model.vocab_size].contiguous(), out_path)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
