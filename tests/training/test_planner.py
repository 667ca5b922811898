"""tools/plan.py's estimates against published figures, the trainer's own measurements and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from native_megatron.training import planner
from native_megatron.training.config import TrainConfig
from native_megatron.utils.config import load_config
from tests.helpers.training import ROOT, TINY

CONFIGS = ROOT / "examples" / "configs"
PLAN = ROOT / "tools" / "plan.py"
H100 = planner.GPUS["h100"]


def config(name: str, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIGS / name, overrides, base={"data.mock": True, "checkpoint.init_from": None})


def layout(tp=1, pp=1, dp=1, vp=None, mbs=1, gbs=64, sp=None, dist_opt=True, recompute="selective", cp=1):
    return planner.Layout(tp=tp, pp=pp, dp=dp, vp=vp, micro_batch=mbs, global_batch=gbs,
                          sequence_parallel=tp > 1 if sp is None else sp, distributed_optimizer=dist_opt,
                          recompute=recompute, cp=cp)


def plan_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PLAN), *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("name, published", [("llama3_8b.yaml", 8_030_261_248), ("llama3_70b.yaml", 70_553_706_496)])
def test_parameter_counts_are_the_published_ones(name, published):
    cfg = config(name)
    plan = planner.plan_layout(cfg, layout(), 128_256, H100)
    assert plan.num_params == published
    # The shards of every (TP, PP) layout add back up to the model (norms are replicated over TP).
    for tp, pp in [(1, 1), (2, 1), (8, 1), (8, 4), (4, 2)]:
        vocab = planner.padded_vocab_size(128_256, cfg.model.make_vocab_size_divisible_by, tp)
        shards = sum(planner.stage_params(cfg, vocab, tp, pp, stage) for stage in range(pp)) * tp
        replicated_norms = (2 * cfg.model.num_layers + 1) * cfg.model.hidden_size * (tp - 1)
        padding = 2 * (vocab - 128_256) * cfg.model.hidden_size
        assert shards - replicated_norms - padding == published, (tp, pp)


@pytest.mark.parametrize("precision, dist_opt, dp, per_param", [
    # Megatron-LM's distributed-optimizer table (docs/source/api-guide/dist_optimizer.md):
    # bf16 weights with fp32 gradients 18 bytes, 6 + 12/d sharded; fp32 16 bytes, 8 + 8/d sharded.
    ("bf16", False, 8, 18), ("bf16", True, 8, 6 + 12 / 8), ("fp32", False, 4, 16), ("fp32", True, 4, 8 + 8 / 4),
])
def test_weights_grads_and_adam_bytes_per_parameter(precision, dist_opt, dp, per_param):
    cfg = config("llama3_8b.yaml", f"--precision={precision}")
    plan = planner.plan_layout(cfg, layout(tp=2, dp=dp, dist_opt=dist_opt), 128_256, H100)
    stage = plan.worst
    assert stage.weights + stage.grads + stage.optimizer == pytest.approx(per_param * stage.params, rel=1e-9)
    # Llama-3-8B at TP=2: every matmul weight halved, norms whole.
    assert stage.params == (8_030_261_248 - 65 * 4096) // 2 + 65 * 4096


@pytest.mark.parametrize("name, seq", [("llama3_8b.yaml", 8192), ("llama3_70b.yaml", 8192), ("llama3_8b.yaml", 2048)])
def test_flops_per_token_within_one_percent_of_6n_plus_attention(name, seq):
    cfg = config(name, f"--data.seq_length={seq}")
    m = cfg.model
    plan = planner.plan_layout(cfg, layout(), 128_256, H100)
    non_embedding = plan.num_params - 128_256 * m.hidden_size  # the input embedding is a lookup, not a matmul
    standard = 6 * non_embedding + 12 * m.num_layers * seq * m.hidden_size
    assert plan.flops_per_token == pytest.approx(standard, rel=0.01)


def test_activation_rules_from_korthikanti_et_al():
    cfg = config("llama3_8b.yaml")

    def acts(**kw):
        return planner.plan_layout(cfg, layout(**kw), 128_256, H100).stages[0].activations

    # 1F1B: the first stage holds PP microbatches of L/PP layers, as much as one whole model's microbatch
    # (plus the embedding output of each microbatch in flight).
    embed = 8192 * 4096 * 2
    assert acts(pp=4, gbs=64) - 4 * embed == acts(pp=1) - embed
    # Interleaving holds more on the first stage; full recomputation far less; sequence parallel splits norms.
    assert acts(pp=4, vp=2) > acts(pp=4)
    assert acts(recompute="full") < acts() / 10
    assert acts(tp=2, sp=True) < acts(tp=2, sp=False) < acts(tp=1)
    # Without flash attention and without selective recomputation the a*s score matrices appear.
    local = config("llama3_8b.yaml", "--model.spec=local", "--model.recompute=none")
    no_flash = planner.plan_layout(local, layout(recompute="none"), 128_256, H100).stages[0].activations
    assert no_flash > 3 * acts()


def test_the_suggestion_is_the_smallest_layout_that_fits():
    cfg = config("llama3_70b.yaml")
    best = planner.suggest(cfg, nodes=8, gpus_per_node=8, vocab_size=128_256, gpu=H100)
    assert best is not None and best.fits
    size = best.layout.tp * best.layout.pp
    for lay in planner.candidate_layouts(cfg, 8, 8):
        if lay.tp * lay.pp < size:
            assert not planner.plan_layout(cfg, lay, 128_256, H100).fits, lay
    assert planner.suggest(cfg, nodes=1, gpus_per_node=1, vocab_size=128_256, gpu=H100) is None


def test_recomputation_costs_compute_and_the_trainer_reports_model_flops_only():
    cfg = config("llama3_8b.yaml")
    m, seq = cfg.model, cfg.data.seq_length
    plans = {r: planner.plan_layout(cfg, layout(tp=2, dp=4, recompute=r), 128_256, H100)
             for r in ("none", "selective", "full")}
    attention_forward = 4 * m.num_layers * seq * m.hidden_size
    layer_matmuls = 8_030_261_248 - 2 * 128_256 * 4096 - (2 * m.num_layers + 1) * 4096   # no embeddings, norms
    assert plans["none"].recompute_flops_per_token == 0
    assert plans["selective"].recompute_flops_per_token == attention_forward     # QK^T and AV again
    assert plans["full"].recompute_flops_per_token == 2 * layer_matmuls + attention_forward  # each layer's forward
    # Full recomputation is a third more compute than none, selective a few percent, at the same utilisation.
    assert plans["full"].step_seconds / plans["none"].step_seconds == pytest.approx(1.32, abs=0.01)
    assert plans["none"].step_seconds < plans["selective"].step_seconds < plans["full"].step_seconds
    full = plans["full"]
    assert full.reported_mfu == pytest.approx(0.4 * full.flops_per_token
                                              / (full.flops_per_token + full.recompute_flops_per_token))


def test_context_parallel_as_in_nemos_llama3_8b_recipe_and_marked_as_not_runnable_here():
    # NeMo's Llama-3-8B pre-training recipe at 8k tokens: TP 1, PP 1, CP 2 on one node of 8 GPUs.
    cfg = config("llama3_8b.yaml", "--parallel.tensor=1")
    lay = planner.layout_from_config(cfg, 8, cp=2)
    assert (lay.tp, lay.cp, lay.pp, lay.dp, lay.gpus, lay.microbatches) == (1, 2, 1, 4, 8, 128)
    with_cp = planner.plan_layout(cfg, lay, 128_256, H100)
    without = planner.plan_layout(cfg, replace(lay, cp=1), 128_256, H100)     # the same replicas on 4 GPUs
    a, b = with_cp.worst, without.worst
    # Each GPU holds half of every sequence: half the activations and logits; the CP ranks also share
    # the distributed optimizer's shards; weights and gradients are whole on each.
    assert (a.weights, a.grads) == (b.weights, b.grads)
    assert a.activations == pytest.approx(b.activations / 2, abs=1) and a.logits == b.logits // 2
    assert a.optimizer == pytest.approx(b.optimizer / 2, abs=1)
    assert with_cp.step_seconds == pytest.approx(without.step_seconds / 2)
    assert not with_cp.runnable and without.runnable
    out = plan_cli("--config", CONFIGS / "llama3_8b.yaml", "--nodes", "1", "--gpus-per-node", "8",
                   "--parallel.tensor=1", "--context-parallel", "2")
    assert out.returncode == 1, out.stderr                        # not a layout to queue: the trainer has no CP
    assert "TP 1 x CP 2 x PP 1 x DP 4 = 8 GPUs" in out.stdout and "no context parallelism yet" in out.stdout
    bad = plan_cli("--config", CONFIGS / "llama3_8b.yaml", "--context-parallel", "2", "--model.spec=local")
    assert bad.returncode == 2 and bad.stderr.strip() == ("error: context parallelism needs transformer-engine's "
                                                          "attention: model.spec te (or auto)")


@pytest.mark.parametrize("name, nodes, gpu", [("llama3_70b.yaml", 4, "h100"), ("llama3_70b.yaml", 2, "h200"),
                                              ("llama3_70b.yaml", 8, "h100")])
def test_the_suggested_settings_give_the_suggested_layout_within_the_margin(name, nodes, gpu):
    args = ["--config", CONFIGS / name, "--nodes", nodes, "--gpus-per-node", "8", "--gpu", gpu]
    first = plan_cli(*args).stdout.splitlines()
    at = next(i for i, line in enumerate(first) if line.startswith("suggest   smallest layout that fits"))
    flags = first[at + 1].split()
    again = plan_cli(*args, *flags)
    assert again.returncode == 0, again.stdout                    # it fits with the margin, as applied
    assert "suggest   this is the smallest layout that fits" in again.stdout
    assert first[at].split(": ", 1)[1].split(",")[0] in again.stdout     # the same layout, VP included


def test_cli_report_reads_well_and_exits_by_fit():
    out = subprocess.run([sys.executable, str(PLAN), "--config", str(CONFIGS / "llama3_8b.yaml"), "--nodes", "4",
                          "--gpus-per-node", "8", "--tokens", "10B"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("8,030,261,248 parameters", "TP 2 x PP 1 x DP 16 = 32 GPUs", "32 microbatches per step",
                   "without the distributed optimizer", "fits,", "10,000,000,000 tokens in", "suggest"):
        assert needle in text, needle
    small = subprocess.run([sys.executable, str(PLAN), "--config", str(CONFIGS / "llama3_70b.yaml"), "--nodes", "1",
                            "--gpus-per-node", "8", "--parallel.pipeline=1", "--parallel.virtual_pipeline=null",
                            "--json"], capture_output=True, text=True)
    assert small.returncode == 1, small.stderr
    result = json.loads(small.stdout)
    assert result["plan"]["fits"] is False and result["suggestion"] is None
    bad = subprocess.run([sys.executable, str(PLAN), "--config", str(CONFIGS / "llama3_8b.yaml"), "--gpus-per-node",
                          "4", "--parallel.tensor=8"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "cannot run on 4 GPUs: world size 4 is not divisible by parallel.tensor" in bad.stdout
    assert "smallest layout that fits: TP 2 x PP 1 x DP 2" in bad.stdout


def test_plan_for_the_tiny_cpu_config_uses_the_tokenizer_vocabulary():
    cfg = load_config(TrainConfig, TINY, base={"data.mock": True})
    vocab = 8000  # examples/tokenizer/sample_ar.model
    plan = planner.plan_layout(replace(cfg, precision="fp32"), planner.layout_from_config(cfg, 1), vocab, H100)
    assert plan.vocab_padded == 8000 and plan.fits


# The node counts the configs' own comments and docs/alignment.md's recipe plan them on.
EXAMPLE_LAYOUTS = {"tiny_cpu.yaml": (1, 1), "llama3_8b.yaml": (4, 8), "llama3_70b.yaml": (8, 8),
                   "rewriter_sft_qwen2.5_3b.yaml": (1, 8), "rewriter_sft_qwen2.5_7b.yaml": (1, 8),
                   "rewriter_sft_llama3_8b.yaml": (1, 8)}


def test_every_shipped_training_config_plans_without_its_data_here(capsys):
    import yaml

    from native_megatron.cli.plan import main

    training = {p.name for p in CONFIGS.glob("*.yaml") if "model" in yaml.safe_load(p.read_text())}
    assert training == set(EXAMPLE_LAYOUTS), "a new example config: add the layout it is planned on"
    for name, (nodes, gpus) in EXAMPLE_LAYOUTS.items():
        # SFT configs name data.sft_dir and checkpoint.init_from, pre-training ones data.paths: none exist here.
        assert main(["--config", str(CONFIGS / name), "--nodes", str(nodes), "--gpus-per-node", str(gpus)]) == 0, name
        out = capsys.readouterr()
        assert "fits," in out.out and not out.err, (name, out.err)


# ---- tools/plan.py rewrite: what rewriting a corpus costs ------------------------------------------------

def test_rewrite_budget_for_the_papers_10b_token_corpus():
    from native_megatron.alignment import budget

    # The paper's release: about 10B tokens in ~59M rows, so ~169 tokens a document.
    work = budget.RewriteWork(documents=59_000_000, input_tokens=10**10)
    engine = budget.published_engine(8e9, budget.gpus_per_engine(8e9, H100.memory_gib))
    assert engine.gpus == 1 and engine.tokens_per_second_per_gpu == 5_777 and "MLPerf" in engine.source
    b = budget.plan_rewrite(work, engine, [1, 64, 4096], client_seconds_per_document=0.033)
    assert b.gpu_hours == pytest.approx(10**10 / 5_777 / 3600)            # 481: output tokens / (tokens/s)
    assert b.shards == 2_950
    one, sixty_four, many = b.rows
    assert one.wall_seconds == pytest.approx(b.gpu_hours * 3600)
    # 64 tasks: the busiest holds ceil(2950 / 64) = 47 whole shards, 2% over the even share.
    assert sixty_four.shards_per_task == 47
    assert sixty_four.wall_seconds == pytest.approx(47 * 20_000 * (10**10 / 59e6) / 5_777)
    assert many.busy_tasks == 2_950 and many.shards_per_task == 1
    # The client: 33 ms per document against the engine's ~29 ms: more than a core per GPU.
    assert b.engine_seconds_per_document == pytest.approx(10**10 / 59e6 / 5_777)
    assert one.client_cores_per_task == pytest.approx(0.033 / b.engine_seconds_per_document)
    assert b.client_share > 1
    # Output follows input: a rewrite 30% longer than its source costs 30% more.
    longer = budget.plan_rewrite(budget.RewriteWork(59_000_000, 10**10, output_ratio=1.3), engine, [64])
    assert longer.gpu_hours == pytest.approx(1.3 * b.gpu_hours)
    # A 70B expert needs 4 H100s (bf16 weights in half their memory) or 2 H200s; its throughput is scaled.
    assert budget.gpus_per_engine(70e9, H100.memory_gib) == 4
    assert budget.gpus_per_engine(70e9, planner.GPUS["h200"].memory_gib) == 2
    assert budget.published_engine(70e9, 4).tokens_per_second_per_gpu == pytest.approx(5_777 * 8 / 70)


def test_plan_rewrite_command_line(capsys):
    from native_megatron.cli.plan import main
    out = plan_cli("rewrite", "--documents", "96K", "--array-sizes", "1,8")
    assert out.returncode == 0, out.stderr
    for needle in ("96,000 documents, 96,000,000 tokens in (1,000 per document)", "5,777 output tokens/s per GPU",
                   "published: MLPerf Inference v5.1", "4.6 GPU-hours", "3 idle: fewer shards than tasks",
                   "33 ms CPU per document", "benchmarks/bench_rewrite.py", "--output-ratio"):
        assert needle in out.stdout, needle
    measured = json.loads(plan_cli("rewrite", "--tokens", "10B", "--documents", "59M", "--rewriter", "3B",
                                   "--tokens-per-second", "12000", "--json").stdout)
    assert measured["engine"]["source"].startswith("measured")
    assert measured["gpu_hours"] == pytest.approx(10**10 / 12_000 / 3600)
    for args, message in [((), "give --documents N, --tokens N or both"),
                          (("--documents", "lots"), "--documents 'lots': give a positive count"),
                          (("--documents", "1M", "--gpu", "a100"), "give --tokens-per-second for a100"),
                          (("--documents", "1M", "--parallel.tensor=2"), "takes no training settings")]:
        assert main(["rewrite", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as exit_:
        main([])                           # neither a config nor the rewrite command
    assert exit_.value.code == 2
