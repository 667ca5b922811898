"""The one client for OpenAI-compatible chat endpoints (`vllm serve` fleets, `transformers serve`, hosted
APIs), shared by the rewriter (alignment/backends/openai_http.py) and the safety judge (evaluation/safety.py).

:meth:`OpenAIClient.chat_many` sends a list with at most ``concurrency`` in
flight (the judge); :meth:`OpenAIClient.submit` streams: each request returns
a future at once and runs as soon as a server has a free place in its window
(``window`` requests in flight per server, by default what the server says it
batches, see :meth:`OpenAIClient.discover_windows`). Each request goes to the
server with the fewest in flight, so no server holds more than its window.
429, 5xx, timeouts and refused connections are retried (tenacity) with
exponential backoff and jitter, so a fleet that comes back is not hit all at
once; after ``max_retries`` a request raises :class:`EndpointUnavailable`. The
first request to spend its retries stops the others, and failures are logged at
most once a minute, so a fleet that goes away ends the run with one line, not a
warning per request and retry. Other 4xx answers are configuration mistakes
and fail at once (:class:`ConfigError`). :meth:`OpenAIClient.check` asks every
server for ``GET /models`` before any work. The API key comes only from the
environment variable named by ``api_key_env``, and goes only to the configured
servers: a redirect to another origin (scheme, host or port) is refused with a
:class:`ConfigError`, never followed (httpx follows none by itself here).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import tenacity

from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
DEFAULT_PORTS = {"http": 80, "https": 443}
WARN_EVERY_S = 60.0       # at most one warning about failing requests per minute
CHECK_TIMEOUT_S = 10.0    # the health check's patience with one server
MAX_REDIRECTS = 10        # same-origin hops followed, as urllib did
DEFAULT_WINDOW = 256      # vLLM's default max_num_seqs: the sequences one engine decodes at once
# Where an engine says how many sequences it batches: vLLM's /server_info (its config, text or JSON) and
# SGLang's /get_server_info.
_WINDOW_KEYS = re.compile(r"[\"']?(max_num_seqs|max_running_requests)[\"']?\s*[:=]\s*(\d+)")

Messages = list[dict[str, str]]


@dataclass
class OpenAIConfig:
    # One or more servers (e.g. a fleet of `vllm serve`); requests are spread round-robin.
    base_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    # The API key is read from this environment variable, never from a file or flag.
    api_key_env: str = "OPENAI_API_KEY"
    # chat_many's requests in flight over all servers (the judge).
    concurrency: int = 16
    # Streamed requests (the rewriter) in flight PER SERVER: as many as the engine batches, so that it never
    # waits for the client. null: what the server reports (vLLM's max_num_seqs), else 256, vLLM's default.
    window: int | None = None
    timeout_s: float = 300.0
    max_retries: int = 6
    backoff_s: float = 1.0

    def validate(self) -> None:
        if not self.base_urls:
            raise ConfigError("rewrite.openai.base_urls is empty")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError("rewrite.openai: concurrency >= 1, max_retries >= 0, timeout_s > 0 required")
        if self.window is not None and self.window < 1:
            raise ConfigError("rewrite.openai.window must be at least 1 (or null: ask the server)")


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EndpointUnavailable(RuntimeError):
    """The servers did not answer after the retries: infrastructure, not content."""


class _Retry(Exception):
    """An attempt that failed in a way worth retrying; the message says how."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class OpenAIClient:
    """Chat completions from ``config.base_urls`` for ``model``. ``name`` says whose requests these are in
    the log; ``urls_setting`` is where the user sets the URLs, for the error messages."""

    def __init__(self, config: OpenAIConfig, model: str, name: str = "rewrite",
                 urls_setting: str = "rewrite.openai.base_urls") -> None:
        self.config, self.model, self.name, self.urls_setting = config, model, name, urls_setting
        self.urls = [u.rstrip("/") for u in config.base_urls]
        self.headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(headers=self.headers, timeout=config.timeout_s, follow_redirects=False,
                                  limits=httpx.Limits(max_connections=None,
                                                      max_keepalive_connections=config.concurrency))
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix=f"{name}-http")
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        # Requests on the wire per server; a request goes to the least loaded (see _pick_url).
        self.in_flight = [0] * len(self.urls)
        self.windows = [config.window or DEFAULT_WINDOW] * len(self.urls)
        self._stream_pool: ThreadPoolExecutor | None = None
        self.retries = 0
        # Set, with the reason, once one request has spent its retries: the others stop at once.
        self._stopped = threading.Event()
        self._stop_reason = ""
        self._warned_at = float("-inf")

    # ---- HTTP, redirects kept within the origin asked -------------------------------------------------

    def _send(self, method: str, url: str, content: bytes | None = None, timeout: float | None = None):
        request = self._http.build_request(method, url, content=content,
                                           timeout=self.config.timeout_s if timeout is None else timeout)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._http.send(request)
            nxt = response.next_request
            if nxt is None:
                return response
            response.close()
            if _origin(str(nxt.url)) != _origin(str(request.url)):
                raise ConfigError(f"{_origin_text(str(request.url))} redirected (HTTP {response.status_code}) to "
                                  f"another origin, {_origin_text(str(nxt.url))}; not followed, so the API key "
                                  f"goes nowhere else: put the address that answers in {self.urls_setting}")
            request = nxt
        raise ConfigError(f"{url}: more than {MAX_REDIRECTS} redirects; put the address that answers in "
                          f"{self.urls_setting}")

    # ---- the health check -----------------------------------------------------------------------------

    def check(self, model_setting: str = "--model") -> None:
        """Ask every server for ``GET /models``, all at once, and fail in seconds with one line unless each
        answers and lists the model.

        A server that does not list models (404/405) is let through with a warning: the first
        request then checks the name. EndpointUnavailable for a server that does not answer,
        ConfigError for one that refuses the key or serves other models.
        """
        urls = list(dict.fromkeys(self.urls))
        with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
            answers = list(pool.map(self._list_models, urls))
        dead = [(u, a) for u, a in zip(urls, answers) if isinstance(a, EndpointUnavailable)]
        if dead:
            where = ", ".join(f"{u} ({a})" for u, a in dead[:3]) + (", ..." if len(dead) > 3 else "")
            which = "the server" if len(urls) == 1 else f"{len(dead)} of the {len(urls)} servers"
            raise EndpointUnavailable(f"{which} in {self.urls_setting} did not answer GET /models: {where}; "
                                      f"start {'it' if len(dead) == 1 else 'them'} or fix the address "
                                      f"(nothing was done)")
        for url, ids in zip(urls, answers):
            if ids is None:
                logger.warning("%s does not list its models; the first request will check the name %r", url,
                               self.model)
            elif self.model not in ids:
                shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
                raise ConfigError(f"{url} serves {shown or 'no model'}, not {self.model!r}: pass {model_setting} "
                                  f"with the name the server lists")

    def _list_models(self, url: str) -> list[str] | None | EndpointUnavailable:
        """The model ids ``url`` serves; None when it does not list them; EndpointUnavailable when it does not
        answer."""
        try:
            resp = self._send("GET", f"{url}/models", timeout=min(self.config.timeout_s, CHECK_TIMEOUT_S))
        except httpx.TransportError as exc:
            return EndpointUnavailable(_reason(exc))
        code = resp.status_code
        if code in (404, 405):
            return None
        if code in (401, 403):
            raise ConfigError(f"{url} refused the request (HTTP {code}): put a valid API key in the "
                              f"environment variable {self.config.api_key_env}")
        if code in RETRY_STATUS:
            return EndpointUnavailable(f"HTTP {code}")
        if not resp.is_success:
            raise ConfigError(f"{url}/models: HTTP {code}; is this an OpenAI-compatible server?")
        try:
            payload = json.loads(resp.content.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{url}/models did not answer JSON: is this an OpenAI-compatible server?") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ConfigError(f"{url}/models did not answer a model list: is this an OpenAI-compatible server?")
        return [str(m.get("id")) for m in data if isinstance(m, dict)]

    # ---- chat completions -----------------------------------------------------------------------------

    def chat_many(self, requests: list[Messages], temperature: float, top_p: float, max_tokens: int,
                  seed: int | None = None) -> list[Completion]:
        """One completion per request, in order, ``concurrency`` at a time."""
        return list(self._pool.map(lambda m: self.chat(m, temperature, top_p, max_tokens, seed), requests))

    def chat(self, messages: Messages, temperature: float, top_p: float, max_tokens: int,
             seed: int | None = None) -> Completion:
        body = {"model": self.model, "messages": messages, "temperature": temperature, "top_p": top_p,
                "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.max_retries + 1),
            wait=lambda state: self.config.backoff_s * 2 ** (state.attempt_number - 1) * (0.5 + random.random()),
            retry=tenacity.retry_if_exception_type(_Retry),
            before_sleep=lambda state: self._note_retry(str(state.outcome.exception())),
            sleep=self._sleep, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(data)
        except _Retry as exc:
            with self._lock:
                if not self._stopped.is_set():
                    self._stop_reason = f"no answer after {self.config.max_retries} retries ({exc})"
                    self._stopped.set()
        raise EndpointUnavailable(self._stop_reason)

    def _attempt(self, data: bytes) -> Completion:
        if self._stopped.is_set():
            raise EndpointUnavailable(self._stop_reason)
        i = self._pick_url()
        url = self.urls[i]
        try:
            resp = self._send("POST", f"{url}/chat/completions", content=data)
        except httpx.TransportError as exc:
            raise _Retry(f"{url}: {_reason(exc)}") from None
        finally:
            with self._lock:
                self.in_flight[i] -= 1
        if resp.status_code in RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status_code} from {url}")
        if not resp.is_success:
            detail = resp.content[:300].decode("utf-8", "replace")
            raise ConfigError(f"{url}: HTTP {resp.status_code} {detail.strip()}")
        try:
            return _parse(json.loads(resp.content.decode("utf-8")))
        except (json.JSONDecodeError, KeyError, IndexError) as exc:
            raise _Retry(f"{url}: unreadable answer ({type(exc).__name__}: {exc})") from None

    def _pick_url(self) -> int:
        """The server with the fewest requests in flight (round-robin among equals), counted as one more.
        With no more requests in flight than the windows add up to, none goes over its window."""
        with self._lock:
            start = next(self._next_url)
            n = len(self.urls)
            i = min(((start + k) % n for k in range(n)), key=lambda j: self.in_flight[j] / self.windows[j])
            self.in_flight[i] += 1
            return i

    # ---- streaming ------------------------------------------------------------------------------------

    def discover_windows(self) -> list[int]:
        """Each server's window: ``window`` when set, else the number of sequences the server says it
        batches (vLLM ``/server_info``, SGLang ``/get_server_info``), else DEFAULT_WINDOW."""
        if self.config.window is None:
            with ThreadPoolExecutor(max_workers=min(len(self.urls), 16)) as pool:
                self.windows = list(pool.map(self._server_window, self.urls))
        return list(self.windows)

    def _server_window(self, url: str) -> int:
        root = url[: -len("/v1")] if url.endswith("/v1") else url
        for path in ("/server_info", "/get_server_info"):
            try:
                resp = self._send("GET", root + path, timeout=min(self.config.timeout_s, CHECK_TIMEOUT_S))
            except (httpx.HTTPError, ConfigError):
                continue
            match = _WINDOW_KEYS.search(resp.text) if resp.is_success else None
            if match and int(match.group(2)) > 0:
                return int(match.group(2))
        return DEFAULT_WINDOW

    def submit(self, messages: Messages, temperature: float, top_p: float, max_tokens: int,
               seed: int | None = None) -> "Future[Completion]":
        """Send one request without waiting: a future of its completion (or of EndpointUnavailable /
        ConfigError). At most the sum of the windows run at once; the rest wait their turn here."""
        if self._stream_pool is None:
            self._stream_pool = ThreadPoolExecutor(max_workers=sum(self.windows),
                                                   thread_name_prefix=f"{self.name}-stream")
        return self._stream_pool.submit(self.chat, messages, temperature, top_p, max_tokens, seed)

    def _sleep(self, seconds: float) -> None:
        """The backoff, cut short when another request has spent its retries."""
        if self._stopped.wait(seconds):
            raise EndpointUnavailable(self._stop_reason)

    def _note_retry(self, error: str) -> None:
        """Count a retry; warn about the failures at most once every WARN_EVERY_S, for all threads together."""
        with self._lock:
            self.retries += 1
            now = time.monotonic()
            if now - self._warned_at < WARN_EVERY_S:
                return
            self._warned_at, retries = now, self.retries
        logger.warning("%s requests are failing (%s): %d retried so far, each up to %d times with backoff",
                       self.name, error, retries, self.config.max_retries)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._stream_pool is not None:
            self._stream_pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def _parse(payload: dict) -> Completion:
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    content = choice["message"].get("content") or ""
    return Completion(content, choice.get("finish_reason"), int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0))
