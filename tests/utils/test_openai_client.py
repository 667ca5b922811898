"""The one OpenAI-compatible client: retries a flaky server, gives up with one reason, stands below its users."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from native_megatron.utils.openai_client import EndpointUnavailable, OpenAIClient, OpenAIConfig


class Flaky:
    """Answers 503 to the first ``failures`` chat requests, then a one-word completion."""

    def __init__(self, failures: int) -> None:
        self.failures, self.seen = failures, 0
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                flaky.seen += 1
                ok = flaky.seen > flaky.failures
                body = json.dumps({"choices": [{"message": {"content": "SAFE"}, "finish_reason": "stop"}]} if ok
                                  else {"error": "overloaded"}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def client(url: str, max_retries: int) -> OpenAIClient:
    return OpenAIClient(OpenAIConfig(base_urls=[url], max_retries=max_retries, backoff_s=0.01, concurrency=1), "m",
                        name="judge", urls_setting="--judge-url")


def test_a_flaky_server_is_retried_until_it_answers():
    with Flaky(failures=2) as server:
        c = client(server.url, max_retries=3)
        try:
            answers = c.chat_many([[{"role": "user", "content": "hi"}]], temperature=0.0, top_p=1.0, max_tokens=4)
        finally:
            c.close()
    assert [a.text for a in answers] == ["SAFE"] and c.retries == 2


def test_a_server_that_never_answers_ends_with_one_reason():
    with Flaky(failures=100) as server:
        c = client(server.url, max_retries=1)
        try:
            with pytest.raises(EndpointUnavailable, match=r"no answer after 1 retries \(HTTP 503 from http"):
                c.chat([{"role": "user", "content": "hi"}], temperature=0.0, top_p=1.0, max_tokens=4)
        finally:
            c.close()
    assert server.seen == 2


def test_the_client_imports_neither_of_its_users():
    code = ("import sys, native_megatron.utils.openai_client; "
            "print(sorted(m for m in sys.modules if m.startswith(('native_megatron.alignment', "
            "'native_megatron.evaluation'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
