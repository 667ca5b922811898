"""The interface every rewriter backend implements, and the checks the backends share."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass

from native_megatron.alignment.config import SamplingConfig
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
    """Turns chat requests into completions; one call handles a batch.

    A backend that can take requests one at a time without a barrier (an HTTP fleet) also
    implements :meth:`submit` and :meth:`window`; the rewrite stage then streams documents
    through it (alignment/streaming.py) instead of calling :meth:`generate` per batch.
    """

    kind: str
    model: str
    # Documents per generate() call when the stage cannot stream: None is rewrite.batch_size.
    documents_per_call: int | None = None

    @abstractmethod
    def generate(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        """One completion per request, in order. Raises BackendUnavailable when it cannot."""

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 3)

    def submit(self, messages: Messages, sampling: SamplingConfig) -> "Future[Generation]":
        """One request, not waited for: a future of its Generation (or of BackendUnavailable)."""
        raise NotImplementedError(f"the {self.kind} backend does not stream")

    def window(self) -> int:
        """Requests worth keeping in flight at once (over all servers); 0: this backend does not stream."""
        return 0

    def token_counter_source(self) -> tuple[bool, str | None]:
        """(whether another process can rebuild count_tokens, the tokenizer it loads or None for the
        3-characters-per-token estimate): what lets the stage's process pool chunk documents."""
        return False, None

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


VLLM_MISSING = "the vllm backend needs vLLM on a GPU machine: pip install -e '.[rewrite]'"


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
