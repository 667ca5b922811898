"""Process pools that keep input order and bounded memory."""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import sys
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def mp_context() -> mp.context.BaseContext:
    """fork on Linux (workers start in milliseconds and inherit imports), spawn elsewhere.

    ``NM_MP_START=spawn|fork|forkserver`` overrides it, e.g. after CUDA was initialised.
    """
    method = os.environ.get("NM_MP_START") or ("fork" if sys.platform.startswith("linux") else "spawn")
    return mp.get_context(method)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                window: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, results in input order.

    Unlike ``Pool.imap``, which reads its whole input ahead into a queue, at most
    ``window`` items are in flight, so a billion-line input streams in constant
    memory. ``workers <= 1`` runs inline (easy to debug, no fork).
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    window = window or 4 * workers
    with mp_context().Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: collections.deque[Any] = collections.deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
