"""The rewriter on any OpenAI-compatible chat server: `vllm serve` fleets, `transformers serve`, hosted APIs.

A thin backend over :class:`native_megatron.utils.openai_client.OpenAIClient`,
which owns the URLs, concurrency, retries with backoff, timeouts, the API key
and the redirect policy. A batch whose requests spent their retries raises
:class:`BackendUnavailable`, so the shard stays unfinished and a rerun redoes it.
"""

from __future__ import annotations

import os

from native_megatron.alignment.backends.base import (
    BackendUnavailable,
    Generation,
    Messages,
    RewriterBackend,
    load_count_tokenizer,
)
from native_megatron.alignment.config import RewriteConfig, SamplingConfig
from native_megatron.utils.openai_client import EndpointUnavailable, OpenAIClient


def check_servers(config: RewriteConfig) -> None:
    """Every server of ``rewrite.openai.base_urls`` answers ``GET /models`` and lists ``rewrite.model``
    (see :meth:`OpenAIClient.check`); BackendUnavailable when one does not answer."""
    client = OpenAIClient(config.openai, config.model)
    try:
        client.check()
    except EndpointUnavailable as exc:
        raise BackendUnavailable(str(exc)) from None
    finally:
        client.close()


class OpenAIBackend(RewriterBackend):
    kind = "openai"

    def __init__(self, config: RewriteConfig) -> None:
        self.model = config.model
        self.client = OpenAIClient(config.openai, config.model)
        self._count = load_count_tokenizer(config.tokenizer or (config.model if os.path.isdir(config.model) else None))

    def count_tokens(self, text: str) -> int:
        return self._count(text) if self._count else super().count_tokens(text)

    def generate(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        try:
            answers = self.client.chat_many(requests, sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                                            sampling.seed)
        except EndpointUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        return [Generation(a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) for a in answers]

    def close(self) -> None:
        self.client.close()
