#!/usr/bin/env python3
"""Training throughput (tokens/s) and MFU of the trainer, per layer spec and micro batch size.

On a GPU it builds a ~1.5B-parameter Llama-style model (16 layers, hidden
2048, GQA 32/8, SwiGLU 8192, Llama-3 vocabulary, sequence 4096) on synthetic
tokens, finds the largest micro batch that fits for each layer spec (``te``
when transformer-engine is installed, ``native`` when the extension has CUDA
kernels, megatron-core's ``local``), and prints tokens/s, TFLOP/s per GPU and
MFU for each, measured in the same run. On a CPU it runs the tiny config, to
show the numbers are produced (MFU needs a known peak: pass --peak-tflops).
``--json PATH`` writes the rows, rewritten after each one so that a run cut
short keeps what it measured; ``--budget-s`` starts no new measurement after
that many seconds. A spec that fails is recorded with its error and the others
still run.

    torchrun --nproc-per-node 8 benchmarks/bench_train.py            # GPU node
    python benchmarks/bench_train.py --preset tiny                    # CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from presets import PRESETS  # benchmarks/presets.py, beside this script

from native_megatron.training.config import TrainConfig
from native_megatron.training.model import have_transformer_engine
from native_megatron.utils.config import load_config
from native_megatron.utils.logging import setup_logging

ROOT = Path(__file__).resolve().parents[1]


def measure(base: list[str], spec: str, mbs: int, steps: int, warmup: int, peak: float | None) -> dict:
    from native_megatron.training.distributed import destroy_distributed  # noqa: F401
    from native_megatron.training.trainer import Trainer

    overrides = base + [f"--model.spec={spec}", f"--schedule.micro_batch_size={mbs}",
                        f"--schedule.train_steps={steps + warmup + 1}", "--schedule.warmup_steps=1",
                        "--schedule.eval_interval=0", "--checkpoint.save_at_end=false",
                        "--checkpoint.resume=false", "--logging.tensorboard=false",
                        "--logging.run_dir=runs/bench_train"]
    if peak:
        overrides.append(f"--logging.peak_tflops={peak}")
    cfg = load_config(TrainConfig, ROOT / "examples" / "configs" / "tiny_cpu.yaml", overrides)
    dp = torch.distributed.get_world_size() // (cfg.parallel.tensor * cfg.parallel.pipeline) \
        if torch.distributed.is_initialized() else 1
    cfg.schedule.global_batch_size = mbs * dp
    trainer = Trainer(cfg)
    try:
        data = trainer._data_iterator(trainer.datasets.train, 0)
        times = []
        for i in range(warmup + steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step(data)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        tokens = cfg.schedule.global_batch_size * cfg.data.seq_length
        from native_megatron.training.metrics import memory_gib, throughput

        tok_s, tflops, mfu = throughput(tokens, seconds, trainer.flops_per_token, trainer.layout.world_size,
                                        trainer.peak)
        return {"spec": spec, "mbs": mbs, "params": trainer.shape.num_params(), "tok_s": tok_s,
                "tflops": tflops, "mfu": mfu, "mem": memory_gib(), "ms": 1000 * seconds}
    finally:
        trainer.close()
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        del trainer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def default_specs() -> list[str]:
    """te when transformer-engine is installed, native when the extension has CUDA kernels, and local."""
    if not torch.cuda.is_available():
        return ["local"]
    from native_megatron.ops import extension_available

    return (["te"] if have_transformer_engine() else []) + (["native"] if extension_available("cuda") else []) \
        + ["local"]


def best_by_spec(rows: list[dict]) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for r in rows:
        if r["spec"] not in best or r["tok_s"] > best[r["spec"]]["tok_s"]:
            best[r["spec"]] = r
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="1b" if torch.cuda.is_available() else "tiny")
    p.add_argument("--specs", default=None,
                   help="comma list of layer specs (default on GPU: te, native, local where available; CPU: local)")
    p.add_argument("--micro-batches", default="1,2,4,8,16", help="candidates, tried in order until one does not fit")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here (JSON)")
    p.add_argument("--budget-s", type=float, default=None, help="start no new measurement after this many seconds")
    p.add_argument("overrides", nargs="*", help="--section.key=value settings")
    args, extra = p.parse_known_args()
    setup_logging("WARNING")
    started = time.monotonic()
    specs = args.specs.split(",") if args.specs else default_specs()
    base = ["--data.mock=true", "--data.paths=[]"] + PRESETS[args.preset] + args.overrides + extra
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    report = {"preset": args.preset, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "specs": specs, "rows": [], "errors": [], "did_not_fit": [], "skipped_for_time": [], "finished": False}

    def write() -> None:
        if args.json and rank0:
            report["best"] = best_by_spec(report["rows"])
            Path(args.json).write_text(json.dumps(report, indent=1))

    for spec in specs:
        for mbs in [int(x) for x in args.micro_batches.split(",")]:
            if args.budget_s is not None and time.monotonic() - started > args.budget_s:
                report["skipped_for_time"].append({"spec": spec, "mbs": mbs})
                continue
            try:
                report["rows"].append(measure(base, spec, mbs, args.steps, args.warmup, args.peak_tflops))
            except torch.cuda.OutOfMemoryError:
                report["did_not_fit"].append({"spec": spec, "mbs": mbs})
                break
            except Exception as exc:  # noqa: BLE001  (one spec failing leaves the others to run)
                print(f"spec {spec}, micro batch {mbs} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                report["errors"].append({"spec": spec, "mbs": mbs, "error": f"{type(exc).__name__}: {exc}"})
                from megatron.core import parallel_state

                parallel_state.destroy_model_parallel()
                break
            finally:
                write()
    rows = report["rows"]
    if rank0:
        print(f"\n{'spec':6} {'mbs':>4} {'params':>14} {'tokens/s':>12} {'TFLOP/s/dev':>12} {'MFU':>7} "
              f"{'mem GiB':>8} {'ms/step':>9}")
        for r in rows:
            mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else "    n/a"
            print(f"{r['spec']:6} {r['mbs']:4d} {r['params']:14,} {r['tok_s']:12,.0f} {r['tflops']:12.2f} {mfu} "
                  f"{r['mem']:8.2f} {r['ms']:9.1f}")
        by_spec = best_by_spec(rows)
        if "local" in by_spec:
            for spec, r in by_spec.items():
                print(f"best {spec}: {r['tok_s']:,.0f} tokens/s (mbs {r['mbs']}), "
                      f"{r['tok_s'] / by_spec['local']['tok_s']:.2f}x megatron-core local spec")
    report["finished"] = True
    write()
    from native_megatron.training.distributed import destroy_distributed

    destroy_distributed()
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(main())
