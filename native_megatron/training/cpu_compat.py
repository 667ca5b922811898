"""Run megatron-core on a machine without CUDA (CPU tests, laptops), changing nothing on GPU.

megatron-core 0.16 assumes CUDA in a few places. On a torch without CUDA,
:func:`install` redirects exactly those, and :func:`cuda_to_cpu` (a context
manager the trainer enters once, for its whole life) maps their ``"cuda"``
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

:func:`uninstall` puts every replaced function back. Fixes to megatron-core bugs
that matter on GPU too live in :mod:`native_megatron.training.mcore_patches`.

Pipeline point-to-point runs with ``batch_p2p_comm=False`` on CPU (gloo has no
batched isend/irecv); that is a config setting, made in ``megatron_config``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)


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
        elif _is_grad_getter(func):
            # megatron-core's zero_grad reads .grad of its optimizer's shard views (not leaves) by design;
            # read through this mode, torch's warning about it names this file on every rank.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf",
                                        category=UserWarning)
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _is_grad_getter(func) -> bool:
    return getattr(func, "__name__", "") == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") \
        == "grad"


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


def _log_filter(record) -> bool:
    # fork() warns when the CPU generator moved inside it: on CPU the tracked
    # "CUDA" state is the CPU generator, so dropout inside fork() moves it by design.
    return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


# (owner, attribute, original value) of each replacement install() made, for uninstall().
_REPLACED: list[tuple[object, str, object]] = []


def _replace(owner, name: str, value) -> None:
    _REPLACED.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def install() -> bool:
    """Redirect megatron-core's CUDA-only calls to the CPU when CUDA is absent.

    Returns True when the redirection is active. Idempotent; a no-op on GPU;
    :func:`uninstall` (or the :func:`installed` block) undoes it.
    """
    if cuda_available():
        return False
    if _REPLACED:
        return True
    import megatron.core.optimizer.optimizer as mc_optimizer
    import megatron.core.tensor_parallel.random as mc_random

    _replace(mc_random, "_get_cuda_rng_state", _cpu_get_rng_state)
    _replace(mc_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    _replace(mc_random.CudaRNGStatesTracker, "add", _cpu_tracker_add)
    _replace(mc_optimizer, "clip_grad_by_total_norm_fp32", _cpu_clip_grad_by_total_norm_fp32)
    _replace(torch.cuda, "current_device", lambda: "cpu")
    _replace(torch.cuda, "synchronize", lambda device=None: None)
    _replace(torch.cuda, "empty_cache", lambda: None)
    logging.getLogger(mc_random.__name__).addFilter(_log_filter)
    # Advice for CUDA streams, printed by every rank: there are none on the CPU.
    warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS", category=UserWarning)
    logger.info("CUDA not available: megatron-core runs on the CPU (native_megatron.training.cpu_compat)")
    return True


def uninstall() -> None:
    """Put back everything :func:`install` replaced; a no-op when nothing is installed."""
    while _REPLACED:
        owner, name, original = _REPLACED.pop()
        setattr(owner, name, original)
    logging.getLogger("megatron.core.tensor_parallel.random").removeFilter(_log_filter)


def is_installed() -> bool:
    return bool(_REPLACED)


@contextlib.contextmanager
def installed() -> Iterator[bool]:
    """:func:`install` for the length of a block (tests); yields whether it is active."""
    was_installed = is_installed()
    try:
        yield install()
    finally:
        if not was_installed:
            uninstall()
