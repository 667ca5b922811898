"""The rewriter on any OpenAI-compatible chat server: `vllm serve` fleets, `transformers serve`, hosted APIs.

A thin backend over :class:`native_megatron.utils.openai_client.OpenAIClient`,
which owns the URLs, concurrency, retries with backoff, timeouts, the API key
and the redirect policy. A batch whose requests spent their retries raises
:class:`BackendUnavailable`, so the shard stays unfinished and a rerun redoes it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future

from native_megatron.alignment.backends.base import (
    BackendUnavailable,
    Generation,
    Messages,
    RewriterBackend,
    load_count_tokenizer,
)
from native_megatron.alignment.config import RewriteConfig, SamplingConfig
from native_megatron.utils.openai_client import EndpointUnavailable, OpenAIClient

logger = logging.getLogger(__name__)


def counting_tokenizer(config: RewriteConfig) -> str | None:
    """The local tokenizer that counts tokens for chunking: rewrite.tokenizer, else the model when it is a
    directory; None: the 3-characters-per-token estimate."""
    return config.tokenizer or (config.model if os.path.isdir(config.model) else None)


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
        self._tokenizer = counting_tokenizer(config)
        self._count = load_count_tokenizer(self._tokenizer)
        self._windows: list[int] | None = None

    def count_tokens(self, text: str) -> int:
        return self._count(text) if self._count else super().count_tokens(text)

    def token_counter_source(self) -> tuple[bool, str | None]:
        return True, self._tokenizer if self._count else None

    def window(self) -> int:
        if self._windows is None:
            self._windows = self.client.discover_windows()
            logger.info("rewrite: up to %s requests in flight per server (%s)", "/".join(map(str, self._windows)),
                        "rewrite.openai.window" if self.client.config.window else "as the servers report, else 256")
        return sum(self._windows)

    def submit(self, messages: Messages, sampling: SamplingConfig) -> Future:
        done: Future = Future()
        inner = self.client.submit(messages, sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                                   sampling.seed)

        def relay(f: Future) -> None:
            if f.cancelled():
                done.cancel()
                return
            exc = f.exception()
            if isinstance(exc, EndpointUnavailable):
                done.set_exception(BackendUnavailable(str(exc)))
            elif exc is not None:
                done.set_exception(exc)
            else:
                a = f.result()
                done.set_result(Generation(a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens))

        inner.add_done_callback(relay)
        return done

    def generate(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        try:
            answers = self.client.chat_many(requests, sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                                            sampling.seed)
        except EndpointUnavailable as exc:
            raise BackendUnavailable(str(exc)) from None
        return [Generation(a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) for a in answers]

    def close(self) -> None:
        self.client.close()
