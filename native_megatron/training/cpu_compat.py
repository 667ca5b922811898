"""Run megatron-core on a machine without CUDA (CPU tests, laptops), changing nothing on GPU.

megatron-core 0.16 assumes CUDA in a few places. On a torch without CUDA,
:func:`install` redirects exactly those, and :func:`cuda_to_cpu` (a context
manager our trainer wraps around megatron-core calls) maps their ``"cuda"``
tensors to the CPU. Both are no-ops when CUDA is available, so GPU runs use
megatron-core unchanged.

What is redirected, and why:

- RNG tracker (``tensor_parallel.random``): ``_get_cuda_rng_state`` /
  ``_set_cuda_rng_state`` and ``CudaRNGStatesTracker.add`` call the CUDA RNG;
  on CPU the tracked states are CPU generator states, so ``fork()`` (used
  around dropout in attention) works and ``model_parallel_cuda_manual_seed``
  seeds per tensor-parallel rank as on GPU.
- ``torch.cuda.current_device()`` (DDP grad buffers, distributed optimizer
  buffers) returns ``"cpu"``; ``torch.cuda.synchronize()`` and
  ``torch.cuda.empty_cache()`` are no-ops, as they are for work that is all on
  the CPU.
- ``device="cuda"`` literals (pipeline schedules' token counters, optimizer
  scalars such as ``found_inf`` and the grad-norm buffers): inside
  :func:`cuda_to_cpu`, tensor factories asked for a CUDA device get the CPU.
- ``Tensor.type()`` string checks (distributed and mixed-precision optimizers
  accept only ``'torch.cuda.FloatTensor'`` and friends): inside
  :func:`cuda_to_cpu`, ``.type()`` of a CPU tensor reads as its CUDA name. It is
  used there as a dtype check only.
- ``clip_grad_by_total_norm_fp32`` asserts CUDA gradients before scaling them;
  on CPU it is replaced by the same scaling without the assertion.

Pipeline point-to-point runs with ``batch_p2p_comm=False`` on CPU (gloo has no
batched isend/irecv); that is a config setting, made in ``megatron_config``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_INSTALLED = False


def cuda_available() -> bool:
    return torch.cuda.is_available()


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int is a CUDA ordinal to torch factories.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        elif func in (torch.Tensor.cuda,):
            return args[0]
        elif func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_to_cpu() -> Iterator[None]:
    """Map CUDA tensor requests to the CPU inside this block; does nothing when CUDA exists."""
    if cuda_available():
        yield
        return
    with _CudaToCpu():
        yield


def _cpu_get_rng_state(device="cuda", clone=False, graph_safe=False):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _cpu_tracker_add(self, name, seed):
    self._is_initialized = True
    if seed in self.seeds_:
        raise Exception(f"seed {seed} already exists")
    self.seeds_.add(seed)
    if name in self.states_:
        raise Exception(f"rng state {name} already exists")
    orig = torch.get_rng_state()
    torch.manual_seed(seed)
    self.states_[name] = torch.get_rng_state()
    torch.set_rng_state(orig)


def _cpu_clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    from megatron.core.utils import to_local_if_dtensor

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [to_local_if_dtensor(getattr(p, attr)).detach() for p in parameters
             if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def install() -> bool:
    """Redirect megatron-core's CUDA-only calls to the CPU when CUDA is absent.

    Returns True when the redirection is active. Idempotent; a no-op on GPU.
    """
    global _INSTALLED
    if cuda_available():
        return False
    if _INSTALLED:
        return True
    import megatron.core.optimizer.optimizer as mc_optimizer
    import megatron.core.tensor_parallel.random as mc_random

    mc_random._get_cuda_rng_state = _cpu_get_rng_state
    mc_random._set_cuda_rng_state = _cpu_set_rng_state
    mc_random.CudaRNGStatesTracker.add = _cpu_tracker_add
    mc_optimizer.clip_grad_by_total_norm_fp32 = _cpu_clip_grad_by_total_norm_fp32
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.empty_cache = lambda: None
    # fork() warns when the CPU generator moved inside it: on CPU the tracked
    # "CUDA" state is the CPU generator, so dropout inside fork() moves it by design.
    logging.getLogger(mc_random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage())
    _INSTALLED = True
    logger.info("CUDA not available: megatron-core runs on the CPU (native_megatron.training.cpu_compat)")
    return True


def install_torch_adam_checkpoint_fix() -> bool:
    """Let the distributed optimizer load reshardable checkpoints with torch's Adam.

    Without apex or transformer-engine (always so on CPU), megatron-core 0.16's
    distributed optimizer runs torch.optim.AdamW, whose per-parameter state holds a
    ``step`` tensor. ``fully_reshardable`` checkpoints store ``step`` once, in the
    param groups, and ``load_state_dict`` restores it from there, but the
    per-parameter copy then also expects a saved ``step`` for every parameter and
    fails (KeyError: 'step'); and ``load_state_dict`` hands every parameter the
    same ``step`` tensor, which torch's foreach Adam then increments once per
    parameter, corrupting Adam's bias correction after a resume. This gives each
    parameter its own copy of the restored ``step`` and copies only the states the
    checkpoint holds per parameter. Installed only when apex and TE are both absent.
    """
    from megatron.core.optimizer import distrib_optimizer as mc_do

    if getattr(mc_do, "HAVE_APEX_OR_TE", True):
        return False
    cls = mc_do.DistributedOptimizer
    original = cls._set_main_param_and_optimizer_states
    if getattr(original, "_nm_fixed", False):
        return True

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

    _set_main_param_and_optimizer_states._nm_fixed = True
    cls._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
    return True
