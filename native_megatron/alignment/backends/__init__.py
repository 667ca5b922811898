"""Rewriter backends behind one interface: ``vllm`` (offline engine), ``openai`` (HTTP servers), ``hf`` (transformers).

The factory and the pre-flight check live here, above the backends: each backend
imports only ``base``, and a backend's heavy imports happen only when it is chosen.
"""

from __future__ import annotations

import importlib.util
import os

from native_megatron.alignment.backends.base import (
    VLLM_MISSING,
    BackendUnavailable,
    Generation,
    RewriterBackend,
    check_model_dir,
)
from native_megatron.alignment.config import RewriteConfig
from native_megatron.utils.config import ConfigError

__all__ = ["BackendUnavailable", "Generation", "RewriterBackend", "build_backend", "check_backend"]


def build_backend(config: RewriteConfig) -> RewriterBackend:
    if not config.model:
        raise ConfigError("rewrite.model is empty: give a model directory (hf, vllm) or a served model name (openai)")
    if config.backend == "hf":
        from native_megatron.alignment.backends.hf import HFBackend

        return HFBackend(config)
    if config.backend == "openai":
        from native_megatron.alignment.backends.openai_http import OpenAIBackend

        return OpenAIBackend(config)
    if config.backend == "vllm":
        from native_megatron.alignment.backends.vllm_engine import VLLMBackend

        return VLLMBackend(config)
    raise ConfigError(f"no rewrite backend for rewrite.backend={config.backend!r}")


def check_backend(config: RewriteConfig) -> None:
    """Fail in seconds, with one line, when the backend cannot run; called before any work.

    openai: every server answers ``GET /models`` and lists the model. vllm: vLLM is
    installed and a model path is there. hf: the model directory holds a readable
    ``config.json``. Nothing is loaded: that is the backend's own start.
    """
    if config.backend == "openai":
        from native_megatron.alignment.backends.openai_http import check_servers

        check_servers(config)
    elif config.backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(VLLM_MISSING)
        if _looks_like_path(config.model) and not os.path.exists(config.model):
            raise ConfigError(f"rewrite.model {config.model} does not exist: give the rewriter's model directory")
    elif config.backend == "hf":
        check_model_dir(config.model)
    if config.tokenizer and _looks_like_path(config.tokenizer) and not os.path.exists(config.tokenizer):
        raise ConfigError(f"rewrite.tokenizer {config.tokenizer} does not exist")


def _looks_like_path(name: str) -> bool:
    # A Hub id such as Qwen/Qwen2.5-7B-Instruct may be downloaded by vLLM; a path must be there.
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)
