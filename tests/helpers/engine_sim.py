"""A loopback OpenAI-compatible server that behaves like one continuous-batching engine (vLLM).

``slots`` sequences decode at once; each decode step takes ``step_s`` whatever the
batch, and gives every running sequence one token; a request beyond the slots
waits in a queue (first come, first served) and starts at the next step with a
free slot. A request's output length follows its document (one token per
``chars_per_token`` characters, capped by ``max_tokens``, then finish reason
``length``); the answer is the document itself, so it passes validation. It says
its batch size where vLLM does (``GET /server_info``), and keeps a history of
how many slots each step used, for the engine's busy share (``GET /stats``).

It runs in its own process (:class:`SimulatedEngine`) so that its CPU is not the client's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DOC_RE = re.compile(r"<document>\n(.*)\n</document>", re.S)


class Engine:
    """The decode loop: a fixed step time, ``slots`` sequences at once, a queue beyond them."""

    def __init__(self, slots: int, step_s: float) -> None:
        self.slots, self.step_s = slots, step_s
        self.queue: deque = deque()
        self.running: list[list] = []          # [tokens left, done event]
        self.lock = threading.Lock()
        self.history: list[tuple[float, int]] = []   # (step start, sequences decoded)
        self.tokens = self.requests = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def generate(self, tokens: int) -> None:
        """Block until ``tokens`` tokens of one sequence are decoded."""
        done = threading.Event()
        with self.lock:
            self.queue.append([tokens, done])
        done.wait()

    def _loop(self) -> None:
        t = time.monotonic()
        while True:
            with self.lock:
                while self.queue and len(self.running) < self.slots:
                    self.running.append(self.queue.popleft())
                n = len(self.running)
                if n:
                    self.history.append((t, n))
                    self.tokens += n
                    keep = []
                    for seq in self.running:
                        seq[0] -= 1
                        if seq[0] <= 0:
                            seq[1].set()
                            self.requests += 1
                        else:
                            keep.append(seq)
                    self.running = keep
            t += self.step_s
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                t = time.monotonic()   # fell behind: the next step starts now, not in a burst

    def stats(self) -> dict:
        with self.lock:
            return {"slots": self.slots, "step_s": self.step_s, "tokens": self.tokens, "requests": self.requests,
                    "history": list(self.history)}


def serve(slots: int, step_s: float, chars_per_token: int, model: str) -> None:
    """Serve until killed; prints the port on stdout first."""
    engine = Engine(slots, step_s)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, as a real server

        def log_message(self, *args):
            pass

        def reply(self, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                return self.reply({"object": "list", "data": [{"id": model, "object": "model"}]})
            if self.path == "/server_info":   # where vLLM shows its config
                return self.reply({"vllm_config": f"SchedulerConfig(max_num_seqs={slots}, ...)"})
            if self.path == "/stats":
                return self.reply(engine.stats())
            self.send_error(404)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            match = DOC_RE.search(body["messages"][-1]["content"])
            doc = match.group(1) if match else body["messages"][-1]["content"]
            want = max(1, len(doc) // chars_per_token)
            tokens = min(want, int(body.get("max_tokens") or want))
            engine.generate(tokens)
            text = doc if tokens == want else doc[: tokens * chars_per_token]
            self.reply({"choices": [{"message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop" if tokens == want else "length"}],
                        "usage": {"prompt_tokens": len(doc) // chars_per_token + 50, "completion_tokens": tokens}})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 4096   # a fleet's worth of connections opening at once, as uvicorn's backlog

        def handle_error(self, request, client_address):
            pass   # a client that went away (killed, or timed out) is not the engine's problem

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class SimulatedEngine:
    """The engine in a child process (``python -m tests.helpers.engine_sim``): ``url`` to send to,
    :meth:`stats` to read, :meth:`stop`."""

    def __init__(self, slots: int = 256, step_s: float = 0.02, chars_per_token: int = 3,
                 model: str = "sim") -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.engine_sim", str(slots), str(step_s),
                                      str(chars_per_token), model], stdout=subprocess.PIPE, text=True, env=env)
        self.port = int(self.proc.stdout.readline())
        self.slots, self.step_s = slots, step_s

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def limit_tokens_per_s(self) -> float:
        return self.slots / self.step_s

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=30) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def __enter__(self) -> "SimulatedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def busy_share(history: list[tuple[float, int]], slots: int, step_s: float, start: float, end: float) -> float:
    """Share of the engine's slot-steps used between ``start`` and ``end`` (monotonic seconds)."""
    steps = max(1.0, (end - start) / step_s)
    used = sum(n for t, n in history if start <= t < end)
    return min(1.0, used / (steps * slots))


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
