"""The interface every rewriter backend implements, and the factory that picks one."""

from __future__ import annotations

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
    import os

    if not os.path.exists(path):
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


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
