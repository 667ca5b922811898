"""Convert Llama and Qwen2 (Qwen1.5/2/2.5) checkpoints between Hugging Face and native_megatron
(megatron-core dist_checkpointing).

    # HF -> Megatron weights for continued pre-training (then: --checkpoint.init_from=ckpt/llama3_8b)
    python tools/convert_checkpoint.py hf-to-megatron --hf /models/Meta-Llama-3-8B --out ckpt/llama3_8b
    # models too big for one process's memory: one process per TP x PP rank, each holding only its shard
    torchrun --nproc-per-node 32 tools/convert_checkpoint.py hf-to-megatron --hf ... --out ... --tp 8 --pp 4
    # any checkpoint (any TP/PP it was saved at) -> HF, for transformers and vLLM
    python tools/convert_checkpoint.py megatron-to-hf --ckpt runs/x/checkpoints/iter_0010000 --out hf/x \\
        --tokenizer /models/Meta-Llama-3-8B

The imported checkpoint is reshardable: it loads at any TP/PP (megatron-core reshards it, and matches
the padded vocabulary rows on load), whichever layout wrote it; one process holds the whole model.
Its tokenizer files are copied to OUT/tokenizer, which the data path accepts as --tokenizer.
"""

from __future__ import annotations

import argparse

from native_megatron.cli import cli_main
from native_megatron.utils.logging import setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-megatron", help="HF Llama or Qwen2 directory -> weights-only checkpoint")
    a.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors)")
    a.add_argument("--out", required=True)
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel size (sets the vocabulary padding)")
    a.add_argument("--pp", type=int, default=1, help="pipeline stages")
    a.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="the checkpoint's weight dtype (default auto: the HF model's own, from config.json's "
                        "dtype: bf16 for Llama-3 and Qwen2.5, fp32 for an fp32 model, which then round-trips "
                        "exactly); match the training run's precision. Recorded in OUT/hf_model.json ('dtype') "
                        "and OUT/config.yaml ('precision')")
    b = sub.add_parser("megatron-to-hf", help="checkpoint -> HF directory")
    b.add_argument("--ckpt", required=True, help="an iter_* directory, an imported or an initial checkpoint")
    b.add_argument("--out", required=True)
    b.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="the export's weight dtype (default auto: as the checkpoint stores them, e.g. fp32 "
                        "after an fp32 import or run, bf16 after a bf16 run)")
    b.add_argument("--tokenizer", help="the tokenizer to write into the export (.model, tokenizer.json or a "
                                       "directory; default: the copy saved in the checkpoint)")
    b.add_argument("--vocab-size", type=int, help="the unpadded vocabulary (default: from the checkpoint)")
    for s in (a, b):
        s.add_argument("--no-progress", action="store_true")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("INFO")
    from native_megatron.convert.checkpoint import hf_to_megatron, megatron_to_hf

    if args.command == "hf-to-megatron":
        path = hf_to_megatron(args.hf, args.out, args.tp, args.pp, args.precision, not args.no_progress)
    else:
        path = megatron_to_hf(args.ckpt, args.out, args.dtype, args.tokenizer, args.vocab_size,
                              progress=not args.no_progress)
    print(f"wrote {path}")
    return 0

