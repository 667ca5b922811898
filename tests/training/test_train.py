"""Training under torchrun on CPU (gloo): layouts agree, resumption is exact, checkpoints reshard.

Tolerances: all runs are fp32. A different TP/PP/DP layout changes the order of
floating-point reductions (split matmuls, all-reduces), so losses agree to
about 1e-6 relative per step; after a few optimizer steps we allow 2e-4
absolute. A resumed run on the same layout must be bit-exact.
"""

from __future__ import annotations

import signal
import subprocess

import psutil
import pytest

from tests.helpers.planner import assert_plan_matches_trainer
from tests.helpers.training import MOCK_TINY, ROOT, env, losses, torchrun_cmd, train, valid_losses

pytestmark = pytest.mark.slow
STEPS = 4
LAYOUT_TOL = 2e-4


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """A single-rank reference run that also saved its initial weights."""
    run = tmp_path_factory.mktemp("ref")
    train(run, 1, *MOCK_TINY, f"--schedule.train_steps={STEPS}", "--checkpoint.save_initial=true")
    return run


@pytest.mark.parametrize("nproc, layout", [
    (2, ["--parallel.tensor=2"]),
    (2, ["--parallel.pipeline=2"]),
    (2, ["--parallel.data=2"]),
    (4, ["--parallel.tensor=2", "--parallel.pipeline=2"]),
    (2, ["--parallel.pipeline=2", "--parallel.virtual_pipeline=2"]),
], ids=["tp2", "pp2", "dp2", "tp2pp2", "pp2vp2"])
def test_parallel_layouts_match_the_single_rank_losses(tmp_path, initial, nproc, layout):
    ref = losses(initial)
    assert len(ref) == STEPS and ref[STEPS] < ref[1]
    run = tmp_path / "run"
    train(run, nproc, *MOCK_TINY, f"--schedule.train_steps={STEPS}",
          f"--checkpoint.init_from={initial}/checkpoints/initial", *layout)
    got = losses(run)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=LAYOUT_TOL), (step, got[step], ref[step])
    # tools/plan.py's memory estimate agrees with what each rank of this layout really holds.
    assert_plan_matches_trainer(run, nproc, *layout)


def test_resume_after_sigkill_continues_the_same_loss_curve(tmp_path):
    n = 6
    straight = tmp_path / "straight"
    train(straight, 1, *MOCK_TINY, f"--schedule.train_steps={2 * n}")
    killed = tmp_path / "killed"
    args = [*MOCK_TINY, f"--logging.run_dir={killed}", f"--schedule.train_steps={2 * n}",
            f"--checkpoint.save_interval={n}"]
    proc = subprocess.Popen(torchrun_cmd(1, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(), start_new_session=True)
    saw_checkpoint = False
    for line in proc.stdout:
        if "saved checkpoint" in line and f"iter_{n:07d}" in line:
            saw_checkpoint = True
            # A crash: no handler runs, no final save. Kill the launcher and every worker it
            # started (they may live in their own process group), and wait until all are gone so
            # that none writes after this point.
            procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for p in procs:
                p.kill()
            _, alive = psutil.wait_procs(procs, timeout=60)
            assert not alive
            break
    proc.wait(timeout=60)
    assert saw_checkpoint
    ckpts = killed / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == str(n)
    assert not (ckpts / f"iter_{2 * n:07d}").exists()
    first = losses(killed)
    (killed / "metrics.jsonl").unlink()
    train(killed, 1, *MOCK_TINY, f"--schedule.train_steps={2 * n}", f"--checkpoint.save_interval={n}")
    resumed = losses(killed)
    expected = losses(straight)
    assert sorted(resumed) == list(range(n + 1, 2 * n + 1))
    for step in range(1, n + 1):
        assert first[step] == expected[step]
    for step in resumed:
        assert resumed[step] == expected[step], step  # bit-exact on CPU


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    args = [*MOCK_TINY, f"--logging.run_dir={run}", "--schedule.train_steps=100000"]
    proc = subprocess.Popen(torchrun_cmd(1, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env())
    for line in proc.stdout:
        if "step      3/" in line:
            # What SLURM pre-emption does to the training process (torchrun's own agent
            # treats a signal to itself as a failure of the whole job).
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.send_signal(signal.SIGTERM)
            break
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by signal" in out
    step = int((run / "checkpoints" / "latest").read_text())
    assert step >= 3 and (run / "checkpoints" / f"iter_{step:07d}" / "config.yaml").exists()


def test_checkpoint_saved_at_tp2_pp2_evaluates_the_same_at_other_layouts(tmp_path):
    src = tmp_path / "src"
    common = [*MOCK_TINY, "--schedule.train_steps=3", "--schedule.eval_steps=2"]
    train(src, 4, *common, "--parallel.tensor=2", "--parallel.pipeline=2", "--schedule.eval_interval=3")
    ref = valid_losses(src)[3]
    ckpt = src / "checkpoints"
    for nproc, layout in [(1, []), (2, ["--parallel.pipeline=2"])]:
        dst = tmp_path / f"dst{nproc}"
        train(dst, nproc, *common, f"--checkpoint.dir={ckpt}", "--schedule.skip_train=true",
              "--checkpoint.save_at_end=false", *layout)
        assert valid_losses(dst)[3] == pytest.approx(ref, abs=LAYOUT_TOL)


def test_the_log_says_what_the_run_reads_and_ends_with_a_summary_and_a_last_validation(tmp_path):
    from tests.helpers.training import random_docs, write_dataset

    prefix = write_dataset(tmp_path / "d_text_document", random_docs(100, 8000))
    run = tmp_path / "run"
    out = train(run, 1, f"--data.paths=[{prefix}]", f"--data.tokenizer={ROOT / 'examples/tokenizer/sample_ar.model'}",
                "--schedule.train_steps=5", "--schedule.eval_interval=3", "--logging.tensorboard=false")
    log = out.stdout + out.stderr
    (blend,) = [line for line in log.splitlines() if "data: 100.0%" in line]
    assert prefix in blend and "100 documents" in blend and "epochs of its train split" in blend
    assert "sample indices ready" in log
    # eval_interval=3 over 5 steps: validations at 3 and, because 5 is not a multiple of 3, at 5.
    assert sorted(valid_losses(run)) == [3, 5]
    (summary,) = [line for line in log.splitlines() if "done: step 5" in line]
    assert "validation loss" in summary and "tok/s in steps" in summary and "checkpoint " in summary


def test_loss_reduction_sum_divides_by_microbatches_and_mean_by_loss_tokens():
    import torch

    from native_megatron.training.trainer import _loss_func

    # Two microbatches, 3 and 5 loss tokens; per-token losses 1, 2, ... as the model's output gives them.
    masks = [torch.tensor([[1, 1, 1, 0, 0, 0]]), torch.tensor([[1, 1, 1, 1, 1, 0]])]
    outputs = [torch.arange(1.0, 7.0).view(1, 6)] * 2
    for reduction, divisor in (("mean", 8), ("sum", 2)):
        results = [_loss_func(m, reduction, o) for m, o in zip(masks, outputs)]
        loss = sum(r[0] for r in results) / sum(int(r[1]) for r in results)  # what megatron-core's scaling does
        assert loss.item() == pytest.approx((6 + 15) / divisor)
        reports = sum(r[2]["lm loss"] for r in results)
        assert reports.tolist() == [21.0, 8.0]  # the logged loss is the per-token mean either way
