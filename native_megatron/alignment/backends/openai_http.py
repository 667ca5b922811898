"""Any OpenAI-compatible chat server: `vllm serve` fleets, `transformers serve`, hosted APIs.

Requests go round-robin over ``base_urls`` with at most ``concurrency`` in
flight. 429, 5xx, timeouts and refused connections are retried with
exponential backoff (and jitter, so a fleet that comes back is not hit all at
once); after ``max_retries`` the batch raises :class:`BackendUnavailable`, so
the shard stays unfinished and a rerun redoes it. The first request to spend
its retries stops the others, and failures are logged at most once a minute,
so a fleet that goes away ends the run with one line, not a warning per
request and retry. Other 4xx answers are configuration mistakes and fail at
once. :func:`check_servers` asks every server for its models before any work.
The API key comes only from the environment variable named by
``api_key_env``, and goes only to the configured servers: a redirect to
another origin (scheme, host or port) is refused with a :class:`ConfigError`,
never followed.
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

from native_megatron.alignment.config import OpenAIConfig, RewriteConfig
from native_megatron.alignment.backends.base import (BackendUnavailable, Generation, Messages,
                                                     RewriterBackend, SamplingConfig, load_count_tokenizer)
from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
DEFAULT_PORTS = {"http": 80, "https": 443}
WARN_EVERY_S = 60.0       # at most one warning about failing requests per minute
CHECK_TIMEOUT_S = 10.0    # the health check's patience with one server
NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError)


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


def _headers(config: OpenAIConfig) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(config.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _urls(config: OpenAIConfig) -> list[str]:
    return [u.rstrip("/") for u in config.base_urls]


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return getattr(reason, "strerror", None) or str(reason)


def check_servers(config: RewriteConfig) -> None:
    """Ask every server of ``rewrite.openai.base_urls`` for ``GET /models``, all at once, and fail in
    seconds with one line unless each answers and lists ``rewrite.model``.

    A server that does not list models (404/405) is let through with a warning: the first
    request then checks the name. BackendUnavailable for a server that does not answer,
    ConfigError for one that refuses the key or serves other models.
    """
    urls = list(dict.fromkeys(_urls(config.openai)))
    opener = urllib.request.build_opener(_SameOriginRedirects)
    headers = _headers(config.openai)
    timeout = min(config.openai.timeout_s, CHECK_TIMEOUT_S)
    with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
        answers = list(pool.map(lambda u: _list_models(opener, u, headers, timeout), urls))
    dead = [(u, a) for u, a in zip(urls, answers) if isinstance(a, BackendUnavailable)]
    if dead:
        where = ", ".join(f"{u} ({a})" for u, a in dead[:3]) + (", ..." if len(dead) > 3 else "")
        which = "the server" if len(urls) == 1 else f"{len(dead)} of the {len(urls)} servers"
        raise BackendUnavailable(f"{which} in rewrite.openai.base_urls did not answer GET /models: {where}; "
                                 f"start {'it' if len(dead) == 1 else 'them'} or fix the address (nothing was done)")
    for url, ids in zip(urls, answers):
        if ids is None:
            logger.warning("%s does not list its models; the first request will check the name %r", url,
                           config.model)
        elif config.model not in ids:
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            raise ConfigError(f"{url} serves {shown or 'no model'}, not {config.model!r}: pass --model with "
                              f"the name the server lists")


def _list_models(opener, url: str, headers: dict[str, str], timeout: float) -> list[str] | None | BackendUnavailable:
    """The model ids ``url`` serves; None when it does not list them; BackendUnavailable when it does not answer."""
    try:
        with opener.open(urllib.request.Request(f"{url}/models", headers=headers), timeout=timeout) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405):
            return None
        if exc.code in (401, 403):
            raise ConfigError(f"{url} refused the request (HTTP {exc.code}): put a valid API key in the "
                              f"environment variable named by rewrite.openai.api_key_env") from None
        if exc.code in RETRY_STATUS:
            return BackendUnavailable(f"HTTP {exc.code}")
        raise ConfigError(f"{url}/models: HTTP {exc.code}; is this an OpenAI-compatible server?") from None
    except NETWORK_ERRORS as exc:
        return BackendUnavailable(_reason(exc))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{url}/models did not answer JSON: is this an OpenAI-compatible server?") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ConfigError(f"{url}/models did not answer a model list: is this an OpenAI-compatible server?")
    return [str(m.get("id")) for m in data if isinstance(m, dict)]


class OpenAIBackend(RewriterBackend):
    kind = "openai"

    def __init__(self, config: RewriteConfig) -> None:
        self.config = config.openai
        self.model = config.model
        self.urls = _urls(self.config)
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self.headers = _headers(self.config)
        counter = load_count_tokenizer(config.tokenizer or (config.model if os.path.isdir(config.model) else None))
        self._count = counter
        self._opener = urllib.request.build_opener(_SameOriginRedirects)
        self.pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="rewrite-http")
        self.retries = 0
        # Set, with the reason, once one request has spent its retries: the others stop at once.
        self._stopped = threading.Event()
        self._stop_reason = ""
        self._warned_at = float("-inf")

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
            if self._stopped.is_set():
                raise BackendUnavailable(self._stop_reason)
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
            except NETWORK_ERRORS as exc:
                last_error = f"{url}: {_reason(exc)}"
            except (json.JSONDecodeError, KeyError, IndexError) as exc:
                last_error = f"{url}: unreadable answer ({type(exc).__name__}: {exc})"
            if attempt < self.config.max_retries:
                self._note_retry(last_error)
                if self._stopped.wait(self.config.backoff_s * (2 ** attempt) * (0.5 + random.random())):
                    raise BackendUnavailable(self._stop_reason)
        with self._lock:
            if not self._stopped.is_set():
                self._stop_reason = f"no answer after {self.config.max_retries} retries ({last_error})"
                self._stopped.set()
        raise BackendUnavailable(self._stop_reason)

    def _note_retry(self, error: str) -> None:
        """Count a retry; warn about the failures at most once every WARN_EVERY_S, for all threads together."""
        with self._lock:
            self.retries += 1
            now = time.monotonic()
            if now - self._warned_at < WARN_EVERY_S:
                return
            self._warned_at, retries = now, self.retries
        logger.warning("rewrite requests are failing (%s): %d retried so far, each up to %d times with backoff",
                       error, retries, self.config.max_retries)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _parse(payload: dict) -> Generation:
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    content = choice["message"].get("content") or ""
    return Generation(content, choice.get("finish_reason"), int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0))
