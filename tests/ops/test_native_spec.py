"""model.spec=native: the GPTModel runs our fused ops, and trains like the local spec.

All runs are fp32 on CPU from the same initial weights; the fused ops compute the same
functions as megatron-core's torch layers up to rounding order, so the losses agree to
about 1e-7 (we allow the layout tolerance of the training tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from native_megatron.ops import extension_available
from tests.helpers.training import MOCK_TINY, ROOT, TINY, env, losses, train

pytestmark = pytest.mark.slow
STEPS = 4
TOL = 2e-4
FUSED = {"rmsnorm_fwd", "rmsnorm_bwd", "rope", "swiglu_fwd", "swiglu_bwd", "xent_fwd", "xent_bwd"}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("local")
    train(run, 1, *MOCK_TINY, f"--schedule.train_steps={STEPS}", "--checkpoint.save_initial=true",
          "--model.spec=local")
    return run


@pytest.mark.parametrize("nproc, layout", [(1, []), (2, ["--parallel.tensor=2"]),
                                           (2, ["--parallel.pipeline=2"])], ids=["tp1", "tp2", "pp2"])
def test_native_spec_trains_like_the_local_spec(tmp_path, local_run, nproc, layout):
    ref = losses(local_run)
    run = tmp_path / "native"
    train(run, nproc, *MOCK_TINY, f"--schedule.train_steps={STEPS}", "--model.spec=native",
          f"--checkpoint.init_from={local_run}/checkpoints/initial", *layout)
    got = losses(run)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=TOL), (step, got[step], ref[step])


@pytest.mark.skipif(not extension_available(), reason="extension not built")
def test_native_spec_runs_every_fused_op(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
           str(ROOT / "tests" / "ops" / "count_native_ops.py"), "--config", str(TINY), *MOCK_TINY,
           "--schedule.train_steps=2", "--model.spec=native", "--parallel.tensor=2",
           f"--logging.run_dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert FUSED <= set(counts), counts
