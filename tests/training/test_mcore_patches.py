"""Each megatron-core fix in mcore_patches is still needed (upstream still fails) and does its job."""

import inspect
from types import SimpleNamespace

import pytest
import torch

from native_megatron.training import mcore_patches


def _fake_distributed_optimizer():
    """The attributes _set_main_param_and_optimizer_states reads, with two parameters sharing
    one restored ``step`` tensor as torch's ``load_state_dict`` leaves them."""
    step = torch.tensor(5.0)
    params = [torch.zeros(2), torch.zeros(2)]
    state = {p: {"step": step, "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)} for p in params}
    optimizer = SimpleNamespace(param_groups=[{"params": params}], state=state)
    model_params = [torch.nn.Parameter(torch.zeros(2)) for _ in params]
    return SimpleNamespace(config=SimpleNamespace(use_precision_aware_optimizer_no_fp8_or_ds_fp8=False),
                           model_param_group_index_map={mp: (0, i) for i, mp in enumerate(model_params)},
                           optimizer=optimizer), model_params, params


def _saved(value: float) -> dict:
    # A fully_reshardable checkpoint holds no per-parameter ``step``.
    return {"param": torch.full((2,), value), "exp_avg": torch.ones(2), "exp_avg_sq": torch.ones(2)}


def _upstream():
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return inspect.unwrap(DistributedOptimizer._set_main_param_and_optimizer_states)


def test_upstream_loading_without_a_per_parameter_step_still_fails():
    fake, model_params, _ = _fake_distributed_optimizer()
    with pytest.raises(KeyError, match="step"):
        _upstream()(fake, model_params[0], _saved(1.0))


def test_fixed_loading_restores_every_state_and_unshares_step():
    fake, model_params, params = _fake_distributed_optimizer()
    fixed = mcore_patches.fix_set_main_param_and_optimizer_states(_upstream())
    for mp in model_params:
        fixed(fake, mp, _saved(1.0))
    steps = [fake.optimizer.state[p]["step"] for p in params]
    assert all(torch.equal(p, torch.ones(2)) for p in params)
    assert all(s.item() == 5.0 for s in steps)
    steps[0].add_(1)  # what foreach Adam does to each parameter's step
    assert steps[1].item() == 5.0


def test_uninstall_puts_upstream_back():
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    before = DistributedOptimizer._set_main_param_and_optimizer_states
    mcore_patches.install()
    mcore_patches.uninstall()
    assert DistributedOptimizer._set_main_param_and_optimizer_states is _upstream()
    if before is not _upstream():  # installed by an earlier in-process test: leave it so
        mcore_patches.install()



_WRITER_QUEUE = """
import multiprocessing, os, signal, time
from megatron.core.dist_checkpointing.strategies import filesystem_async as fa
from native_megatron.training import mcore_patches
for name, make in [("upstream", fa._get_write_results_queue),
                   ("shielded", mcore_patches.shielded_write_results_queue(fa._get_write_results_queue))]:
    fa._results_queue = None
    queue = make()
    helper = multiprocessing.active_children()[-1]
    os.kill(helper.pid, signal.SIGTERM)  # what torchrun's killpg and scancel do to it
    time.sleep(0.5)
    try:
        queue.put("written")
        print(name, queue.get())
    except (BrokenPipeError, EOFError, ConnectionError) as exc:
        print(name, "lost")
"""


@pytest.mark.slow
def test_the_checkpoint_writer_queue_survives_sigterm_only_when_shielded():
    import subprocess
    import sys

    from tests.helpers.training import ROOT, env

    out = subprocess.run([sys.executable, "-c", _WRITER_QUEUE], capture_output=True, text=True, env=env(),
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["upstream lost", "shielded written"], out.stdout
