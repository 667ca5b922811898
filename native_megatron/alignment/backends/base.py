"""The interface every rewriter backend implements, and the factory that picks one."""

from __future__ import annotations

import importlib.util
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

from native_megatron.alignment.config import RewriteConfig, SamplingConfig
from native_megatron.utils.config import ConfigError

Messages = list[dict[str, str]]


@dataclass
class Generation:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BackendUnavailable(RuntimeError):
    """The backend could not answer after its retries: infrastructure, not content. The shard is
    left unfinished so that a rerun redoes it."""


class RewriterBackend(ABC):
    """Turns chat requests into completions; one call handles a batch."""

    kind: str
    model: str

    @abstractmethod
    def generate(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        """One completion per request, in order. Raises BackendUnavailable when it cannot."""

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 3)

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model}


def load_count_tokenizer(path: str | None):
    """A token counter from a local tokenizer directory/file, or None."""
    if not path:
        return None
    if not os.path.exists(path):
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


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


VLLM_MISSING = "the vllm backend needs vLLM on a GPU machine: pip install -e '.[rewrite]'"


def _looks_like_path(name: str) -> bool:
    # A Hub id such as Qwen/Qwen2.5-7B-Instruct may be downloaded by vLLM; a path must be there.
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


def check_model_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f"rewrite.model {path} is not a local model directory (the hf backend never downloads)")
    config_file = os.path.join(path, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if not model_type:
        raise ConfigError(f"rewrite.model {path}: no readable config.json with a model_type; is this a "
                          f"transformers model directory?")


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
