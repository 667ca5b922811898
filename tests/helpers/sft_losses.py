"""Per-conversation losses of a random single-process GPTModel (TP=1, PP=1, fp32, local spec) on one SFT
data directory, packed, unpacked, and packed with attention crossing conversations:
`python sft_losses.py SFT_DIR SEQ_LENGTH OUT.json --model.x=...`. OUT.json maps each conversation to
[packed, unpacked, crossing], its mean loss over its trained tokens."""

import json
import sys
from collections import defaultdict

import torch

from native_megatron.data.sft import PackedSFTDataset
from native_megatron.training import megatron_config
from native_megatron.training.config import TrainConfig
from native_megatron.training.cpu_compat import cuda_to_cpu
from native_megatron.training.distributed import destroy_distributed, init_distributed
from native_megatron.training.model import build_model_chunks, padded_vocab_size
from native_megatron.training.packing import block_causal_mask
from native_megatron.utils.config import load_config, split_overrides


def per_conversation(model, ds: PackedSFTDataset, mask: bool) -> dict[int, float]:
    sums, counts = defaultdict(float), defaultdict(float)
    for i in range(ds.per_epoch):
        sample, members = ds[i], ds.samples[i]
        segments = sample.get("segment_ids", torch.zeros_like(sample["tokens"]))
        attention = block_causal_mask(segments[None]) if mask else None
        with torch.no_grad(), cuda_to_cpu():
            losses = model(sample["tokens"][None], sample["position_ids"][None], attention,
                           labels=sample["labels"][None])[0].double()
        for k, conv in enumerate(members):
            at = (segments == k) & (sample["loss_mask"] > 0)
            sums[int(conv)] += float(losses[at].sum())
            counts[int(conv)] += float(at.sum())
    return {c: sums[c] / counts[c] for c in sums}


def main():
    rest, overrides = split_overrides(sys.argv[1:])
    sft_dir, seq_length, out_path = rest
    cfg = load_config(TrainConfig, None, overrides, base={"data.mock": True, "data.paths": [], "precision": "fp32",
                                                          "model.spec": "local", "data.seq_length": int(seq_length)})
    init_distributed(cfg)
    try:
        vocab = padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, 1)
        (model,) = build_model_chunks(cfg, megatron_config.transformer_config(cfg, on_gpu=False), vocab, "local")
        model.eval()
        make = dict(directory=sft_dir, split="train", seq_length=int(seq_length), num_samples=1, seed=0)
        packed = PackedSFTDataset(**make, pack=True)
        unpacked = PackedSFTDataset(**make, pack=False)
        assert packed.per_epoch < unpacked.per_epoch, "nothing was packed together"
        results = [per_conversation(model, packed, mask=True), per_conversation(model, unpacked, mask=False),
                   per_conversation(model, packed, mask=False)]
        with open(out_path, "w") as f:
            json.dump({c: [r[c] for r in results] for c in results[0]}, f)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
