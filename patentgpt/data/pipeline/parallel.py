"""Ordered multiprocess map over chunks of work, so outputs are the same for any ``num_proc``.

Workers get their (picklable) state once through an initializer; results come back in input
order (``Pool.imap``), and the parent writes them, so files are byte-identical whether a step
ran on one process or many. ``num_proc == 1`` runs inline with no pool at all.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while True:
        chunk = list(islice(it, size))
        if not chunk:
            return
        yield chunk


def _context():
    # fork is cheap and shares the imported modules; fall back to spawn where it does not exist.
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def worker_defaults() -> None:
    """What every worker process starts with: no tokenizers threads inside a worker, and the default
    SIGTERM action (a forked worker inherits the handler Ray's core installs in a driver that started
    Ray, which prints a stack trace when a pool terminates its workers)."""
    import signal

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if mp.parent_process() is not None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _init_worker(init: Callable | None, args: tuple) -> None:
    worker_defaults()
    if init is not None:
        init(*args)


def ordered_map(fn: Callable[[Any], Any], chunks: Iterable[Any], *, num_proc: int,
                init: Callable | None = None, init_args: tuple = (), prefetch: int = 4) -> Iterator[Any]:
    """Yield ``fn(chunk)`` for every chunk, in order, on ``num_proc`` processes.

    ``init(*init_args)`` sets a worker's global state (it also runs in-process when
    ``num_proc == 1``). Chunks are read lazily, at most ``prefetch`` per worker ahead.
    """
    if num_proc <= 1:
        _init_worker(init, init_args)
        for chunk in chunks:
            yield fn(chunk)
        return
    ctx = _context()
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(init, init_args)) as pool:
        pending: list = []
        it = iter(chunks)
        window = max(1, num_proc * prefetch)
        for chunk in islice(it, window):
            pending.append(pool.apply_async(fn, (chunk,)))
        while pending:
            result = pending.pop(0).get()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.apply_async(fn, (nxt,)))
            yield result
