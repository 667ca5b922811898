"""Fixes to megatron-core bugs, on CPU and GPU alike; each names the version it targets and can be undone.

Targets megatron-core 0.16 (checked against 0.16.1). ``tests/training/test_mcore_patches.py``
runs each unpatched upstream function and shows it still fails; when an upgrade
makes that test fail, the fix is no longer needed: delete it.

- Distributed optimizer + torch's Adam (no apex, no transformer-engine):
  loading a ``fully_reshardable`` checkpoint fails, and resuming corrupts Adam's
  ``step`` (see :func:`fix_set_main_param_and_optimizer_states`).
- Deprecation warnings megatron-core's own calls into torch raise on every rank at
  every checkpoint load (:data:`UPSTREAM_DEPRECATIONS`): nothing a user can act on.
- The checkpoint writer's results queue lives in a helper process that a SIGTERM
  to the worker's process group kills, so the save a signal asks for fails
  (see :func:`shielded_write_results_queue`).
"""

from __future__ import annotations

import multiprocessing
import signal
import warnings
from typing import Callable

MCORE_VERSION = "0.16"

# (owner, attribute, original value) of each fix install() made, for uninstall().
_REPLACED: list[tuple[object, str, object]] = []


def fix_set_main_param_and_optimizer_states(original: Callable) -> Callable:
    """``DistributedOptimizer._set_main_param_and_optimizer_states`` for torch's Adam.

    Without apex or transformer-engine, megatron-core's distributed optimizer runs
    torch.optim.AdamW, whose per-parameter state holds a ``step`` tensor.
    ``fully_reshardable`` checkpoints store ``step`` once, in the param groups, and
    ``load_state_dict`` restores it from there, but the per-parameter copy then also
    expects a saved ``step`` for every parameter and fails (KeyError: 'step'); and
    ``load_state_dict`` hands every parameter the same ``step`` tensor, which
    torch's foreach Adam then increments once per parameter, corrupting Adam's bias
    correction after a resume. The fix gives each parameter its own copy of the
    restored ``step`` and copies only the states the checkpoint holds per parameter.
    """

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        if not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            state = self.optimizer.state[main_param]
            missing = [k for k in state if k not in tensors]
            for k in missing:
                # load_state_dict gave every parameter the *same* step tensor; torch's
                # foreach Adam would then add 1 to it once per parameter per step.
                state[k] = state[k].detach().clone()
            if missing:
                tensors = dict(tensors, **{k: state[k] for k in missing})
        return original(self, model_param, tensors)

    _set_main_param_and_optimizer_states.__wrapped__ = original  # inspect.unwrap() finds upstream's
    return _set_main_param_and_optimizer_states


# What a cluster sends to every process of a job (torchrun to each worker's process group, scancel and
# SLURM's --signal to the whole step) when it wants a save; the trainer, not a helper, must act on it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def shielded_write_results_queue(original: Callable) -> Callable:
    """``filesystem_async._get_write_results_queue`` whose helper process outlives a stop signal.

    megatron-core's checkpoint writer returns its results through a queue held by a
    ``multiprocessing`` Manager process it spawns on the first save. That process is in the
    worker's process group and keeps the default SIGTERM action, so when torchrun (which
    signals each worker's group) or ``scancel`` stops a run, the helper dies at once and the
    save the trainer then makes fails with BrokenPipeError, leaving ``iter_N.partial``. The
    fix starts the same Manager with the stop signals ignored; the trainer still gets them.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa

    def _get_write_results_queue():
        if fa._results_queue is None:
            from multiprocessing.managers import SyncManager

            manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
            # Blocked while it starts, so a signal arriving before its initializer runs is not fatal.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                manager.start(initializer=_ignore_stop_signals)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            fa._results_queue = manager.Queue()
        return fa._results_queue

    _get_write_results_queue.__wrapped__ = original
    return _get_write_results_queue


# (message regex, category) of warnings about megatron-core 0.16's calls into torch 2.13, not about ours.
UPSTREAM_DEPRECATIONS = (
    (r"`load_state_dict` is deprecated", FutureWarning),  # dist_checkpointing/strategies/torch.py
    (r"Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning),
)


def install() -> list[str]:
    """Apply the fixes this installation needs; returns their names. Idempotent."""
    from megatron.core.optimizer import distrib_optimizer as mc_do

    if _REPLACED:
        return [name for _, name, _ in _REPLACED]
    for message, category in UPSTREAM_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if not getattr(mc_do, "HAVE_APEX_OR_TE", True):
        cls, name = mc_do.DistributedOptimizer, "_set_main_param_and_optimizer_states"
        original = getattr(cls, name)
        _REPLACED.append((cls, name, original))
        setattr(cls, name, fix_set_main_param_and_optimizer_states(original))
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa

    original = fa._get_write_results_queue
    _REPLACED.append((fa, "_get_write_results_queue", original))
    fa._get_write_results_queue = shielded_write_results_queue(original)
    return [name for _, name, _ in _REPLACED]


def uninstall() -> None:
    """Put back every upstream function :func:`install` replaced."""
    while _REPLACED:
        owner, name, original = _REPLACED.pop()
        setattr(owner, name, original)
