"""Plan a training run before queueing it: layout, memory per GPU, FLOPs, step time and time to train.

    python tools/plan.py --config examples/configs/llama3_8b.yaml --nodes 4 --gpus-per-node 8 --gpu h100

Reads the same config as pretrain_arabic.py (with --section.key=value overrides)
and prints the parallel layout, a per-GPU memory estimate for the worst pipeline
stage (weights, gradients, optimizer states with and without the distributed
optimizer, activations with and without recomputation), whether it fits with a
margin, FLOPs per token and what recomputation adds, the expected step time and
time to train at a stated utilisation, and the smallest layout that fits, with
the settings that give it. --context-parallel plans a layout the trainer cannot
run yet (what it would take). Nothing runs on a GPU. The estimates are
explained in docs/multinode.md.

    python tools/plan.py rewrite --documents 59M --tokens 10B --rewriter 8B

plans a rewrite instead: GPU-hours, wall time per array size and the client
cores each task needs (docs/alignment.md, "Planning the rewrite").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, replace

from native_megatron.alignment import budget
from native_megatron.cli import add_config_help, cli_main, print_config
from native_megatron.training import planner
from native_megatron.training.config import TrainConfig
from native_megatron.training.metrics import ModelShape
from native_megatron.utils.config import (
    ConfigError,
    config_from_dict,
    merged_settings,
    split_overrides,
    top_level_keys,
    validate_config,
)

# The config sections set by --section.key=value: (dataclass, key prefix).
SETTINGS = [(TrainConfig, "")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any training setting can be changed as --section.key=value, e.g. "
                                       "--parallel.tensor=4 --model.recompute=full.")
    p.add_argument("--config", metavar="YAML", help="the training config (as for pretrain_arabic.py); required "
                                                    "unless the command is rewrite")
    p.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, metavar="G", help="GPUs per node (default 8)")
    p.add_argument("--gpu", choices=sorted(planner.GPUS), default="h100", help="GPU model (default h100)")
    p.add_argument("--mfu", type=float, default=0.40, metavar="F",
                   help="share of the peak the GPUs reach on the FLOPs they do, recomputation included (default "
                        "0.40); without recomputation it is the MFU the trainer logs")
    p.add_argument("--context-parallel", type=int, default=1, metavar="CP",
                   help="split each sequence over CP GPUs (default 1). The trainer has no context parallelism "
                        "yet: a plan with CP > 1 is what it would take, and exits 1")
    p.add_argument("--tokens", metavar="COUNT",
                   help="tokens to train, e.g. 10B (default: train_steps x tokens per step)")
    p.add_argument("--margin", type=float, default=0.05, metavar="F",
                   help="memory to keep free, a fraction (default 0.05)")
    p.add_argument("--reserve-gib", type=float, default=4.0, metavar="GIB",
                   help="CUDA context, NCCL buffers and fragmentation, GiB per GPU (default 4)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_config_help(p, SETTINGS, note="as for pretrain_arabic.py, explained in docs/training.md")
    commands = p.add_subparsers(dest="command", metavar="[rewrite]",
                                help="plan rewriting a corpus instead (GPU-hours, wall time, client cores): "
                                     "tools/plan.py rewrite --help")
    add_rewrite_parser(commands)
    return p


def add_rewrite_parser(commands) -> None:
    r = commands.add_parser("rewrite", description=budget.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            help="plan rewriting a corpus: GPU-hours, wall time per array size, client cores")
    r.add_argument("--documents", metavar="N", help="documents to rewrite, e.g. 96K or 59M")
    r.add_argument("--tokens", metavar="N", help="their tokens, e.g. 10B (give one or both of --documents, --tokens)")
    r.add_argument("--tokens-per-document", type=float, default=1000, metavar="T",
                   help="input tokens per document, when only one of --documents and --tokens is given (default "
                        "1000: about a page)")
    r.add_argument("--output-ratio", type=float, default=1.0, metavar="R",
                   help="output tokens per input token (default 1.0: a rewrite is about as long as its source; "
                        "the stats of a first run give yours: completion over document tokens)")
    r.add_argument("--guideline-tokens", type=int, default=500, metavar="T",
                   help="the guidelines' prompt, prefilled with each request (default 500, the shipped Arabic "
                        "guidelines)")
    r.add_argument("--rewriter", default="8B", metavar="SIZE", help="the rewriter's parameters (default 8B)")
    r.add_argument("--tokens-per-second", type=float, metavar="TPS",
                   help="output tokens/s per GPU, measured (the rewrite stage prints `generated tokens/s`). "
                        f"Default: the published {budget.PUBLISHED_TOKENS_PER_SECOND:,} for an 8B model on an H100 "
                        f"({budget.PUBLISHED_SOURCE}), scaled by parameters for other sizes")
    r.add_argument("--gpu", choices=sorted(planner.GPUS), default="h100",
                   help="GPU model, for the GPUs an engine needs (default h100)")
    r.add_argument("--gpus-per-task", type=int, metavar="G",
                   help="GPUs per engine, one engine per array task (default: the fewest whose memory holds the "
                        "bf16 weights in half, the rest for the KV cache)")
    r.add_argument("--array-sizes", default="1,8,16,32,64,128", metavar="LIST",
                   help="array sizes to show the wall time for (default 1,8,16,32,64,128)")
    r.add_argument("--shard-size", type=int, default=budget.SHARD_SIZE, metavar="N",
                   help=f"documents per shard, the unit a task takes: the prepare stage's output.shard_size "
                        f"(default {budget.SHARD_SIZE:,})")
    r.add_argument("--client-ms-per-document", type=float, default=1000 * budget.CLIENT_SECONDS_PER_DOCUMENT,
                   metavar="MS",
                   help=f"client CPU per document (default {1000 * budget.CLIENT_SECONDS_PER_DOCUMENT:.0f}: today's "
                        "client against a simulated engine; measure yours with benchmarks/bench_rewrite.py)")
    r.add_argument("--json", action="store_true", help="print the plan as JSON")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    rest, overrides = split_overrides(argv, top_level_keys(TrainConfig))
    p = build_parser()
    args = p.parse_args(rest)
    if args.command is None and not args.config:
        p.error("--config is required: the training config to plan (or plan a rewrite: tools/plan.py rewrite)")
    if args.nodes < 1 or args.gpus_per_node < 1:
        p.error("--nodes and --gpus-per-node must be at least 1")
    if not 0 < args.mfu <= 1:
        p.error("--mfu is a fraction between 0 and 1, e.g. 0.4")
    if args.context_parallel < 1:
        p.error("--context-parallel must be at least 1")
    return args, overrides


def planning_config(path: str, overrides: list[str]) -> TrainConfig:
    """The config as the trainer reads it, checked as the trainer checks it except for the data and init_from.

    The planner reads the model, layout, batch and sequence length, never the data or a checkpoint, which
    need not exist on the machine that plans. Mock tokens stand in for any kind of data (pre-training
    paths or an SFT directory alike); the data's tokenizer is kept for the vocabulary.
    """
    cfg = config_from_dict(TrainConfig, merged_settings(path, overrides))
    stand_in = replace(cfg, data=replace(cfg.data, mock=True, paths=[], sft_dir=None),
                       checkpoint=replace(cfg.checkpoint, init_from=None))
    validate_config(stand_in)
    return replace(stand_in, data=replace(stand_in.data, tokenizer=cfg.data.tokenizer_path()))


def vocab_size(cfg: TrainConfig) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.data.tokenizer and os.path.exists(cfg.data.tokenizer):
        from native_megatron.data.tokenizer import load_tokenizer

        return load_tokenizer(cfg.data.tokenizer).vocab_size
    raise ConfigError("model.vocab_size is not set and data.tokenizer is not readable here: "
                      "give --model.vocab_size=N")


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def row(label: str, n: float, note: str = "") -> str:
    return f"  {label:<38}{gib(n):>8}" + (f"   ({note})" if note and not note.startswith("of ") else
                                           f"   {note}" if note else "")


def render(cfg: TrainConfig, config_path: str, args: argparse.Namespace, plan: planner.Plan | None,
           error: str | None, best: planner.Plan | None, tokens: int) -> str:
    m, gpu = cfg.model, planner.GPUS[args.gpu]
    world = args.nodes * args.gpus_per_node
    shape = ModelShape.from_config(cfg.model, vocab_size(cfg))
    lines = [f"plan for {config_path} on {args.nodes} node(s) x {args.gpus_per_node} {gpu.name} = {world} GPUs", "",
        f"model     {m.num_layers} layers, hidden {m.hidden_size}, FFN {m.ffn_hidden_size}, "
        f"{m.num_attention_heads} heads ({m.num_query_groups} KV groups), vocabulary {shape.vocab_size:,}",
        f"          {shape.num_params():,} parameters; {shape.flops_per_token(cfg.data.seq_length) / 1e9:.1f} GFLOP "
        f"per token at sequence {cfg.data.seq_length:,} (6 x matmul weights + attention)",
    ]
    if plan is None:
        lines += ["", f"layout    the config's layout cannot run on {world} GPUs: {error}"]
    else:
        lay, w = plan.layout, plan.worst
        lines += [
            f"layout    {lay.describe()} = {lay.gpus} GPUs; "
            f"sequence parallel {on_off(lay.sequence_parallel)}, "
            f"distributed optimizer {on_off(lay.distributed_optimizer)}, recompute {lay.recompute}",
            f"batch     global {lay.global_batch:,} sequences = {plan.tokens_per_step:,} tokens; micro batch "
            f"{lay.micro_batch}; {lay.microbatches} microbatches per step (gradient accumulation)"
            + (f"; pipeline bubble {100 * lay.bubble:.1f}%" if lay.pp > 1 else ""),
            "",
            f"memory per GPU, worst pipeline stage ({w.stage + 1} of {lay.pp}), GiB:",
            row(f"weights ({planner.resolve_precision(cfg)})", w.weights),
            row("gradients (fp32 buffer)", w.grads),
            row("optimizer (Adam + fp32 master)", w.optimizer,
                f"{gib(w.optimizer_not_distributed)} without the distributed optimizer" if lay.distributed_optimizer
                else f"{gib(w.optimizer_not_distributed / lay.dp)} with the distributed optimizer"),
            row(f"activations (recompute {lay.recompute})", w.activations,
                f"none: {gib(w.activations_no_recompute)}, full: {gib(w.activations_full_recompute)}"
                + ("; flash attention keeps no score matrix" if planner.attention_is_fused(cfg) else "")),
            row("logits and loss (last stage)", w.logits),
            row("reserve (CUDA, NCCL, fragmentation)", w.reserve),
            row("total", w.total,
                f"of {gpu.memory_gib:.1f} GiB: fits, {gib(plan.usable_bytes - w.total)} GiB to spare after the "
                f"{100 * plan.margin:.0f}% margin" if plan.fits else
                f"of {gpu.memory_gib:.1f} GiB: DOES NOT FIT (over by {gib(w.total - plan.usable_bytes)} GiB with "
                f"the {100 * plan.margin:.0f}% margin)"),
        ]
        if lay.pp > 1:
            per_stage = ", ".join(f"{s.stage + 1}: {gib(s.total)}" for s in plan.stages)
            lines.append(f"  per stage: {per_stage}")
        lines += ["", *time_lines(plan, gpu, tokens)]
        if not plan.runnable:
            lines.append(f"note      pretrain_arabic.py has no context parallelism yet: this is what CP {lay.cp} "
                         f"would take, not a layout to queue (exit status 1)")
    lines.append("")
    if best is None:
        lines.append(f"suggest   no layout fits on {world} {gpu.name} GPUs, even with full recomputation: "
                     "add nodes, lower the micro batch or the sequence length")
    elif plan is not None and best.layout == plan.layout:
        lines.append("suggest   this is the smallest layout that fits")
    else:
        lay = best.layout
        lines.append(f"suggest   smallest layout that fits: {lay.describe()}, recompute {lay.recompute}: "
                     f"{gib(best.worst.total)} GiB per GPU ({gib(best.usable_bytes - best.worst.total)} to spare "
                     f"after the margin), {planner.format_duration(best.step_seconds)} per step")
        lines.append("          " + " ".join(planner.layout_overrides(cfg, lay))
                     + (f", and context parallel {lay.cp} (not in the trainer yet)" if lay.cp > 1 else ""))
    return "\n".join(lines)


def time_lines(plan: planner.Plan, gpu: planner.GPU, tokens: int) -> list[str]:
    lay = plan.layout
    lines = [f"time      at {100 * plan.mfu:.0f}% of peak ({gpu.peak_tflops:.0f} TFLOP/s bf16 per GPU) on the FLOPs "
             f"done: {planner.format_duration(plan.step_seconds)} per step, {plan.tokens_per_second:,.0f} tokens/s"]
    if plan.recompute_flops_per_token:
        lines.append(f"          recompute {lay.recompute} redoes {plan.recompute_flops_per_token / 1e9:.1f} GFLOP "
                     f"per token (+{100 * plan.recompute_flops_per_token / plan.flops_per_token:.0f}% compute): "
                     f"the trainer will log {100 * plan.reported_mfu:.0f}% MFU")
    lines.append(f"          {tokens:,} tokens in {planner.format_duration(tokens / plan.tokens_per_second)} "
                 f"({tokens / plan.tokens_per_step:,.0f} steps)")
    return lines


def plan_json(plan: planner.Plan | None, best: planner.Plan | None, tokens: int, error: str | None) -> dict:
    def one(p: planner.Plan | None):
        if p is None:
            return None
        return {"layout": asdict(p.layout), "gpu": asdict(p.gpu), "num_params": p.num_params,
                "vocab_padded": p.vocab_padded, "flops_per_token": p.flops_per_token,
                "recompute_flops_per_token": p.recompute_flops_per_token,
                "stages": [dict(asdict(s), total=s.total) for s in p.stages], "worst_total": p.worst.total,
                "fits": p.fits, "runnable": p.runnable, "step_seconds": p.step_seconds,
                "reported_mfu": p.reported_mfu, "tokens_per_second": p.tokens_per_second,
                "seconds_to_train": tokens / p.tokens_per_second}
    return {"plan": one(plan), "error": error, "suggestion": one(best), "tokens": tokens}


def count(text: str, flag: str) -> int:
    try:
        n = planner.parse_tokens(text)
    except ConfigError:
        n = 0
    if n < 1:
        raise ConfigError(f"{flag} {text!r}: give a positive count like 96K, 59M or 10B")
    return n


def rewrite_budget(args: argparse.Namespace) -> budget.RewriteBudget:
    if not args.documents and not args.tokens:
        raise ConfigError("plan rewrite: give --documents N, --tokens N or both (e.g. --documents 96K)")
    if args.tokens_per_document <= 0 or args.output_ratio <= 0 or args.client_ms_per_document < 0:
        raise ConfigError("--tokens-per-document and --output-ratio must be positive, --client-ms-per-document "
                          "not negative")
    documents = count(args.documents, "--documents") if args.documents else None
    tokens = count(args.tokens, "--tokens") if args.tokens else None
    documents = documents or max(1, round(tokens / args.tokens_per_document))
    tokens = tokens or round(documents * args.tokens_per_document)
    work = budget.RewriteWork(documents, tokens, args.output_ratio, args.guideline_tokens)
    params = count(args.rewriter, "--rewriter")
    gpus = args.gpus_per_task or budget.gpus_per_engine(params, planner.GPUS[args.gpu].memory_gib)
    if args.tokens_per_second:
        engine = budget.Engine(params, gpus, args.tokens_per_second, "measured (--tokens-per-second)")
    elif args.gpu != "h100":
        raise ConfigError(f"the published throughput is for an H100: give --tokens-per-second for {args.gpu}")
    else:
        engine = budget.published_engine(params, gpus)
    try:
        sizes = [int(x) for x in args.array_sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or gpus < 1 or args.shard_size < 1:
        raise ConfigError("--array-sizes is a list of positive counts like 1,8,64; --gpus-per-task and "
                          "--shard-size must be at least 1")
    return budget.plan_rewrite(work, engine, sizes, args.client_ms_per_document / 1000, args.shard_size)


def render_rewrite(b: budget.RewriteBudget) -> str:
    w, e = b.work, b.engine
    lines = [
        f"rewrite   {w.documents:,} documents, {w.input_tokens:,} tokens in ({w.input_tokens / w.documents:,.0f} "
        f"per document)",
        f"          {w.output_tokens:,} tokens out: {w.output_ratio:.2f} per token in (--output-ratio; a rewrite is "
        f"about as long as its source)",
        f"          {w.prompt_tokens:,} prompt tokens prefilled, the guidelines' {w.guideline_tokens} with each "
        f"request (vLLM's prefix cache serves most of them)",
        f"engine    {budget.format_count(e.params)} rewriter on {e.gpus} GPU(s) per task, "
        f"{e.tokens_per_second_per_gpu:,.0f} output tokens/s per GPU",
        f"          {e.source}",
        f"compute   {b.gpu_hours:,.1f} GPU-hours",
        f"shards    {b.shards:,} of up to {b.shard_size:,} documents (--shard-size); task i takes shards i, "
        f"i + tasks, ...",
        "",
        f"  {'tasks':>6} {'GPUs':>6} {'wall time':>11} {'shards/task':>12} {'client cores/task':>18} "
        f"{'client cores, all':>18}",
    ]
    for r in b.rows:
        idle = f"   {r.tasks - r.busy_tasks:,} idle: fewer shards than tasks" if r.busy_tasks < r.tasks else ""
        lines.append(f"  {r.tasks:>6,} {r.gpus:>6,} {planner.format_duration(r.wall_seconds):>11} "
                     f"{r.shards_per_task:>12,} {r.client_cores_per_task:>18.2f} "
                     f"{r.client_cores_per_task * r.busy_tasks:>18.1f}{idle}")
    verdict = "within" if b.client_share <= budget.CLIENT_SHARE_TARGET else "above"
    per_doc = 1000 * b.engine_seconds_per_document
    lines += ["",
              "wall time is generation alone, at the stated throughput; add minutes per task to load the model",
              f"client    {1000 * b.client_seconds_per_document:g} ms CPU per document (--client-ms-per-document; "
              "measure with benchmarks/bench_rewrite.py)",
              f"          = {100 * b.client_share:.0f}% of the engine's {per_doc:,.0f} ms per document per GPU, "
              f"{verdict} the {100 * budget.CLIENT_SHARE_TARGET:.0f}% target: give each task the client cores above"]
    return "\n".join(lines)


def rewrite_json(b: budget.RewriteBudget) -> dict:
    return {"work": dict(asdict(b.work), output_tokens=b.work.output_tokens, prompt_tokens=b.work.prompt_tokens),
            "engine": asdict(b.engine), "gpu_hours": b.gpu_hours, "shards": b.shards,
            "client_seconds_per_document": b.client_seconds_per_document,
            "engine_seconds_per_document": b.engine_seconds_per_document, "client_share": b.client_share,
            "arrays": [asdict(r) for r in b.rows]}


@cli_main
def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "rewrite":
        if overrides:
            raise ConfigError(f"plan rewrite takes no training settings ({overrides[0]})")
        b = rewrite_budget(args)
        print(json.dumps(rewrite_json(b), indent=1) if args.json else render_rewrite(b))
        return 0
    cfg = planning_config(args.config, overrides)
    if args.print_config:   # the config as the user gave it, not its stand-in data
        return print_config(config_from_dict(TrainConfig, merged_settings(args.config, overrides)))
    vocab = vocab_size(cfg)
    gpu = planner.GPUS[args.gpu]
    world = args.nodes * args.gpus_per_node
    plan, error = None, None
    try:
        plan = planner.plan_layout(cfg, planner.layout_from_config(cfg, world, args.context_parallel), vocab,
                                   gpu, args.mfu, args.margin, args.reserve_gib)
    except ConfigError as exc:
        error = str(exc)
    if args.context_parallel > 1:
        planner.check_context_parallel(cfg, args.context_parallel)   # one line, not a search that finds nothing
    best = planner.suggest(cfg, args.nodes, args.gpus_per_node, vocab, gpu, args.mfu, args.margin,
                           args.reserve_gib, cp=args.context_parallel)
    tokens = planner.parse_tokens(args.tokens) if args.tokens else \
        cfg.schedule.train_steps * cfg.schedule.global_batch_size * cfg.data.seq_length
    if args.json:
        print(json.dumps(plan_json(plan, best, tokens, error), indent=1))
    else:
        print(render(cfg, args.config, args, plan, error, best, tokens))
    return 0 if plan is not None and plan.fits and plan.runnable else 1

