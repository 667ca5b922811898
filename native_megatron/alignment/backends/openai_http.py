"""Any OpenAI-compatible chat server: `vllm serve` fleets, `transformers serve`, hosted APIs.

Requests go round-robin over ``base_urls`` with at most ``concurrency`` in
flight. 429, 5xx, timeouts and refused connections are retried with
exponential backoff (and jitter, so a fleet that comes back is not hit all at
once); after ``max_retries`` the batch raises :class:`BackendUnavailable`, so
the shard stays unfinished and a rerun redoes it. Other 4xx answers are
configuration mistakes and fail at once. The API key comes only from the
environment variable named by ``api_key_env``, and goes only to the configured
servers: a redirect to another origin (scheme, host or port) is refused with a
:class:`ConfigError`, never followed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from native_megatron.alignment.config import RewriteConfig
from native_megatron.alignment.backends.base import (BackendUnavailable, Generation, Messages,
                                                     RewriterBackend, SamplingConfig, load_count_tokenizer)
from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the origin asked: the request carries the API key."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise ConfigError(f"{_origin_text(req.full_url)} redirected (HTTP {code}) to another origin, "
                              f"{_origin_text(newurl)}; not followed, so the API key goes nowhere else: "
                              f"put the address that answers in rewrite.openai.base_urls")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class OpenAIBackend(RewriterBackend):
    kind = "openai"

    def __init__(self, config: RewriteConfig) -> None:
        self.config = config.openai
        self.model = config.model
        self.urls = [u.rstrip("/") for u in self.config.base_urls]
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        key = os.environ.get(self.config.api_key_env)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        counter = load_count_tokenizer(config.tokenizer or (config.model if os.path.isdir(config.model) else None))
        self._count = counter
        self._opener = urllib.request.build_opener(_SameOriginRedirects)
        self.pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="rewrite-http")
        self.retries = 0

    def count_tokens(self, text: str) -> int:
        return self._count(text) if self._count else super().count_tokens(text)

    def generate(self, requests: list[Messages], sampling: SamplingConfig) -> list[Generation]:
        return list(self.pool.map(lambda m: self._one(m, sampling), requests))

    def _url(self) -> str:
        with self._lock:
            return self.urls[next(self._next_url)]

    def _one(self, messages: Messages, sampling: SamplingConfig) -> Generation:
        body = {"model": self.model, "messages": messages, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        last_error = "no attempt"
        for attempt in range(self.config.max_retries + 1):
            url = self._url()
            try:
                req = urllib.request.Request(f"{url}/chat/completions", data=data, headers=self.headers)
                with self._opener.open(req, timeout=self.config.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return _parse(payload)
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code not in RETRY_STATUS:
                    raise ConfigError(f"{url}: HTTP {exc.code} {detail.strip()}") from None
                last_error = f"HTTP {exc.code} from {url}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, json.JSONDecodeError,
                    KeyError, IndexError) as exc:
                last_error = f"{type(exc).__name__} from {url}: {exc}"
            if attempt < self.config.max_retries:
                with self._lock:
                    self.retries += 1
                delay = self.config.backoff_s * (2 ** attempt) * (0.5 + random.random())
                logger.warning("rewrite request failed (%s); retry %d/%d in %.1fs", last_error, attempt + 1,
                               self.config.max_retries, delay)
                time.sleep(delay)
        raise BackendUnavailable(f"no answer after {self.config.max_retries} retries: {last_error}")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _parse(payload: dict) -> Generation:
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    content = choice["message"].get("content") or ""
    return Generation(content, choice.get("finish_reason"), int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0))
