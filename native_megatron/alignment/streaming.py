"""Streaming rewrite: documents flow through a window of in-flight requests, with no barrier per batch.

A batch call waits for its slowest request before the next batch starts, so a
continuous-batching engine runs mostly empty. Here every chunk of every
document is its own request (:meth:`RewriterBackend.submit`); new documents are
read and sent as soon as requests finish, keeping ``window`` requests in flight
(the engines' batch size over all servers). A document whose chunks have all
come back is validated at once and, when the policy says so, its retry is sent
at once. Finished documents wait in a reorder buffer and leave it in input
order, so the shard is byte for byte what the batch path writes.

The client's own CPU work (redaction, token counting and chunking, prompts,
validation) can run in a process pool (``rewrite.client_workers``), so that
the thread that feeds the servers is never the bottleneck.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from native_megatron.alignment.backends.base import Generation, load_count_tokenizer
from native_megatron.alignment.config import RewriteConfig
from native_megatron.alignment.guidelines import Guidelines
from native_megatron.alignment.rewriter import Attempt, DocResult, DocumentWork, Prepared, Rewriter
from native_megatron.alignment.validation import ValidationConfig

# Documents held at once (sent, or finished and waiting for an earlier one) per request of the window:
# enough that one long document does not stall the window, bounded so memory is.
HELD_PER_SLOT = 4
TICK_S = 0.5   # how often progress is refreshed while nothing finishes


# ---- the process pool: one DocumentWork per worker ------------------------------------------------------

_WORK: DocumentWork | None = None


def _init_worker(config: RewriteConfig, validation: ValidationConfig, guidelines: Guidelines,
                 tokenizer: str | None, redact: bool) -> None:
    global _WORK
    count = load_count_tokenizer(tokenizer) or (lambda text: max(1, len(text) // 3))
    _WORK = DocumentWork(config, validation, guidelines, count, redact)


def _prepare(row: dict) -> Prepared:
    return _WORK.prepare(row)


def _judge(source: str, chunks, gens: list[Generation], number: int) -> Attempt:
    return _WORK.judge(source, chunks, gens, number)


# Requests in flight from which the client's CPU work moves to a worker process by default. Measured
# (docs/alignment.md, "Streaming"): this process does ~3 ms of CPU per document, enough for about 14
# GPUs at 6,000 tokens/s; the pool's own cost (pickling, a second interpreter) pays only beyond that.
POOL_FROM_WINDOW = 2048


def client_workers(config: RewriteConfig, window: int) -> int:
    """Processes for the client's CPU work: rewrite.client_workers, else 1 for a fleet whose windows add
    up to POOL_FROM_WINDOW when this machine has a core to spare, else 0 (done in this process)."""
    if config.client_workers is not None:
        return config.client_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if cores > 1 and window >= POOL_FROM_WINDOW else 0


def start_pool(rewriter: Rewriter, workers: int) -> ProcessPoolExecutor | None:
    """The pool for the client's CPU work, or None when the backend's token counter cannot be rebuilt in
    another process (then the work is done in this one). Started before any HTTP thread exists."""
    rebuildable, tokenizer = rewriter.backend.token_counter_source()
    if workers < 1 or not rebuildable:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(rewriter.config, rewriter.validation, rewriter.guidelines, tokenizer,
                                         rewriter.redact))
    for f in [pool.submit(_prepare, {"id": "", "file": "", "line": 0, "text": "warm-up"}) for _ in range(workers)]:
        f.result()
    return pool


# ---- the stream ---------------------------------------------------------------------------------------

@dataclass
class _Doc:
    prep: Prepared | None = None
    attempts: list[Attempt] = field(default_factory=list)
    gens: list[Generation | None] = field(default_factory=list)
    waiting: int = 0


class Stream:
    """Rewrites ``rows`` through ``rewriter``'s streaming backend; :meth:`run` yields DocResults in input
    order. ``on_progress(in_flight)`` is called as documents finish and every TICK_S."""

    def __init__(self, rewriter: Rewriter, pool: ProcessPoolExecutor | None = None, on_progress=None) -> None:
        self.rewriter, self.pool, self.on_progress = rewriter, pool, on_progress or (lambda in_flight: None)
        self.window = rewriter.backend.window()
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.docs: dict[int, _Doc] = {}
        self.in_flight = 0       # requests sent and not answered
        self.pending_cpu = 0     # documents being prepared or validated (in the pool, or queued here)

    def run(self, rows: Iterable[dict]) -> Iterator[DocResult]:
        rows = iter(rows)
        done: dict[int, DocResult] = {}
        next_in = next_out = 0
        exhausted = False
        held = max(self.window * HELD_PER_SLOT, 16)
        while True:
            # Keep the window full: a request in flight per slot, plus the documents being prepared.
            while not exhausted and self.in_flight + self.pending_cpu < self.window \
                    and next_in - next_out < held:
                row = next(rows, None)
                if row is None:
                    exhausted = True
                    break
                self.docs[next_in] = _Doc()
                self._cpu(("prepared", next_in), _prepare, self.rewriter.work.prepare, row)
                next_in += 1
            if exhausted and next_out == next_in:
                return
            try:
                event = self.events.get(timeout=TICK_S)
            except queue.Empty:
                self.on_progress(self.in_flight)
                continue
            finished = self._handle(event)
            if finished is not None:
                done[finished[0]] = finished[1]
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if finished is not None:
                self.on_progress(self.in_flight)

    def _cpu(self, tag: tuple, remote, local, *args) -> None:
        """Run one piece of CPU work in the pool (its answer comes back as an event) or here. Either way it
        counts against the window until handled, so that reading never runs ahead of the servers."""
        self.pending_cpu += 1
        if self.pool is None:
            try:
                self.events.put((*tag, local(*args), None))
            except Exception as exc:   # surfaced by _handle, in order with the rest
                self.events.put((*tag, None, exc))
            return
        self.pool.submit(remote, *args).add_done_callback(
            lambda f: self.events.put((*tag, None if f.exception() else f.result(), f.exception())))

    def _send(self, i: int, number: int) -> None:
        d = self.docs[i]
        sampling = self.rewriter.config.sampling if number == 1 else self.rewriter.config.retry()
        d.gens = [None] * len(d.prep.requests)
        d.waiting = len(d.prep.requests)
        for k, messages in enumerate(d.prep.requests):
            self.in_flight += 1
            self.rewriter.backend.submit(messages, sampling).add_done_callback(
                lambda f, k=k: self.events.put(("generated", i, k, None if f.exception() else f.result(),
                                                f.exception())))

    def _handle(self, event: tuple) -> tuple[int, DocResult] | None:
        kind, i, *rest = event
        d = self.docs[i]
        if kind == "generated":
            k, gen, exc = rest
            self.in_flight -= 1
            if exc is not None:
                raise exc
            d.gens[k] = gen
            d.waiting -= 1
            if d.waiting == 0:
                number = len(d.attempts) + 1
                self._cpu(("judged", i), _judge, self.rewriter.work.judge, d.prep.row["text"], d.prep.chunks,
                          d.gens, number)
            return None
        value, exc = rest
        self.pending_cpu -= 1
        if exc is not None:
            raise exc
        if kind == "prepared":
            d.prep = value
            self._send(i, 1)
            return None
        d.attempts.append(value)      # judged
        if self.rewriter.needs_retry(value):
            self._send(i, 2)
            return None
        del self.docs[i]
        return i, self.rewriter.finish(d.prep, d.attempts)
