"""A real OpenAI-compatible server for tests (`transformers serve` on a tiny local model), and a
fault-injecting proxy in front of it (5xx answers, slow answers, a killed upstream)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers.ports import free_port


class ServedModel:
    """`transformers serve MODEL` on 127.0.0.1, started and stopped by the test."""

    def __init__(self, model_dir: str, port: int | None = None) -> None:
        self.model_dir = model_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180) -> "ServedModel":
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
        exe = os.path.join(os.path.dirname(sys.executable), "transformers")
        self.proc = subprocess.Popen([exe, "serve", self.model_dir, "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("transformers serve exited at start")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).read()
                return self
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("transformers serve did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code: int, payload: bytes | dict) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    # A streaming client opens a window of connections at once; the default backlog of 5 resets some.
    request_queue_size = 1024


class _LocalServer:
    """A threaded HTTP server on a free localhost port, run as a context manager."""

    def _serve(self, handler: type) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._closing = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and close the port: from now on a connection is refused."""
        with self._closing:
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
                self.server = None


class FaultProxy(_LocalServer):
    """Forwards POSTs to ``upstream``; every ``fail_every``-th request gets a 503 instead, every
    ``slow_every``-th waits ``delay`` seconds first, and ``on_request(n)`` runs before request n."""

    def __init__(self, upstream: str, fail_every: int = 0, slow_every: int = 0, delay: float = 0.0,
                 on_request=None) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail_every, self.slow_every, self.delay = fail_every, slow_every, delay
        self.on_request = on_request
        self.count = self.failed = self.slowed = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(_QuietHandler):
            def do_GET(self):  # the backend's health check (GET /v1/models), passed through uncounted
                path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                try:
                    with urllib.request.urlopen(proxy.upstream + path, timeout=30) as resp:
                        self.reply(resp.status, resp.read())
                except urllib.error.HTTPError as exc:
                    self.reply(exc.code, exc.read())
                except (urllib.error.URLError, ConnectionError, socket.timeout):
                    self.reply(502, json.dumps({"error": "upstream unreachable"}).encode())

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.count += 1
                    n = proxy.count
                if proxy.on_request:
                    proxy.on_request(n)
                if proxy.fail_every and n % proxy.fail_every == 0:
                    with proxy.lock:
                        proxy.failed += 1
                    return self.reply(503, b'{"error": "overloaded"}')
                if proxy.slow_every and n % proxy.slow_every == 0:
                    with proxy.lock:
                        proxy.slowed += 1
                    time.sleep(proxy.delay)
                path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                req = urllib.request.Request(proxy.upstream + path, data=body,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=120) as resp:
                        self.reply(resp.status, resp.read())
                except urllib.error.HTTPError as exc:
                    self.reply(exc.code, exc.read())
                except (urllib.error.URLError, ConnectionError, socket.timeout):
                    self.reply(502, json.dumps({"error": "upstream unreachable"}).encode())

        self._serve(Handler)


class ExpertServer(_LocalServer):
    """A stand-in for a strong model behind an OpenAI-compatible API: lists ``model`` at /v1/models,
    answers /v1/chat/completions with the fakes' faithful polishing edit (so rewrites pass
    validation), refuses documents containing REFUSE, and answers 503 to every request after
    ``fail_after`` of them (a fleet going away) or, after ``close_after``, closes its port."""

    def __init__(self, fail_after: int | None = None, model: str = "expert", close_after: int | None = None) -> None:
        from tests.helpers.fakes import PolishingBackend

        self.backend = PolishingBackend()
        self.fail_after, self.close_after = fail_after, close_after
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        expert = self

        class Handler(_QuietHandler):
            def do_GET(self):
                if self.path.rstrip("/") != "/v1/models":
                    return self.reply(404, {"error": "not found"})
                self.reply(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with expert.lock:
                    expert.requests.append(body)
                    n = len(expert.requests)
                if expert.close_after is not None and n > expert.close_after:
                    threading.Thread(target=expert.close, daemon=True).start()
                    self.close_connection = True
                    return  # no answer: the connection drops, and the port is closing
                if expert.fail_after is not None and n > expert.fail_after:
                    return self.reply(503, {"error": "overloaded"})
                from native_megatron.alignment.config import SamplingConfig

                gen = expert.backend.generate([body["messages"]], SamplingConfig())[0]
                self.reply(200, {"choices": [{"message": {"role": "assistant", "content": gen.text},
                                               "finish_reason": gen.finish_reason}],
                                  "usage": {"prompt_tokens": gen.prompt_tokens,
                                            "completion_tokens": gen.completion_tokens}})

        self._serve(Handler)


class RecordingServer(_LocalServer):
    """Answers every GET or POST with a one-word chat completion and keeps each request's headers.

    With ``redirect=(code, target)`` it answers requests addressed to 127.0.0.1 with ``code`` and
    ``Location: target + path`` instead; ``target=None`` is this same server under the name
    localhost: the same port, another host, so another origin.
    """

    def __init__(self, redirect: tuple[int, str | None] | None = None) -> None:
        self.headers: list[dict[str, str]] = []
        recorder = self

        class Handler(_QuietHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if redirect and self.headers.get("Host", "").startswith("127.0.0.1"):
                    code, target = redirect
                    target = target or recorder.url.replace("127.0.0.1", "localhost")
                    path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                    self.send_response(code)
                    self.send_header("Location", target.rstrip("/") + path)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                recorder.headers.append(dict(self.headers))
                self.reply(200, {"choices": [{"message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}]})

            do_GET = do_POST = answer

        self._serve(Handler)
