"""Load the compiled extension (``native_megatron._C``) if it was built; never compile at run time."""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _load():
    try:
        from native_megatron import _C  # noqa: F401  (importing registers the torch.ops.native_megatron ops)
    except ImportError as exc:
        return None, str(exc)
    return _C, None


def extension_available(device: torch.device | str | None = None) -> bool:
    """Whether the extension has kernels for ``device`` (any device: whether it is built at all)."""
    ext, _ = _load()
    if ext is None:
        return False
    if device is None:
        return True
    kind = torch.device(device).type
    return kind == "cpu" or (kind == "cuda" and bool(ext.cuda))


def describe() -> str:
    ext, err = _load()
    if ext is None:
        return (f"torch reference ops (extension not built: {err}; build it with "
                f"`pip install --no-build-isolation -e .` where torch is installed)")
    return f"C++ extension ({'CPU and CUDA' if ext.cuda else 'CPU only'} kernels)"


@functools.lru_cache(maxsize=None)
def log_path_once() -> None:
    logger.info("native_megatron ops: %s", describe())
