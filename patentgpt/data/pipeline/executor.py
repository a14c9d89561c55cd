"""Where a step's tasks run: this machine's processes (``executor: local``) or a Ray cluster
(``executor: ray``).

Both run the same task functions on the same deterministic partitions and hand the results back
in submission order, so a step's output does not depend on the executor or the worker count.
A task gets its worker state through an initializer run once per worker process and map call
(``init(*init_args)``), writes its own outputs to the (shared) output directory and returns a small
result; :func:`measured` wraps it to report the peak resident memory of the worker while it ran.

Ray: ``ray.address: auto`` joins a running cluster (``ray start --head`` / ``ray up``; every node
must see ``output_dir`` and the inputs at the same path, e.g. on NFS or a mounted bucket);
without an address the command starts a local Ray with ``ray.num_cpus`` CPUs and stops it at the
end. Lost workers are retried by Ray (``ray.max_retries``); a task is a pure function of its
partition, so a retry writes the same bytes.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
import uuid
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

from patentgpt.data.pipeline.parallel import _context as _mp_context
from patentgpt.data.pipeline.parallel import worker_defaults
from patentgpt.data.pipeline.parallel import ordered_map

FAULT_DIR_ENV = "PATENTGPT_PIPELINE_FAULTS"


def fault_point(name: str) -> None:
    """Fault injection for the resume tests: when ``$PATENTGPT_PIPELINE_FAULTS/<name>`` exists, remove
    it and SIGKILL this process (a lost worker or driver). Costs one ``stat`` when unset."""
    root = os.environ.get(FAULT_DIR_ENV)
    if not root:
        return
    path = os.path.join(root, name)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class PeakRSS:
    """Peak resident memory (MB) of this process while the block runs (psutil, sampled every 5 ms;
    also the OS high-water mark when it was set inside the block)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = self._proc.memory_info().rss
        self._hwm0 = _maxrss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        hwm = _maxrss()
        if hwm > self._hwm0:  # the process's all-time peak was reached inside this block
            self.peak = max(self.peak, hwm)

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def maxrss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    return round(_maxrss() / 2**20, 1)


_STATE: dict = {}


def _ensure_init(token: str, init: Callable | None, init_args: tuple) -> None:
    if _STATE.get("token") != token:
        worker_defaults()
        if init is not None:
            init(*init_args)
        _STATE["token"] = token


def measured(fn: Callable, item: Any) -> Any:
    """``fn(item)`` with the worker's peak RSS (MB) and pid: ``(result, {"peak_rss_mb", "pid", "seconds"})``."""
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        result = fn(item)
    return result, {"peak_rss_mb": mem.mb, "pid": os.getpid(), "seconds": round(time.perf_counter() - t0, 3)}


class WorkerLost(RuntimeError):
    """A local worker process died (killed, out of memory): the step stops; a rerun resumes it."""


class LocalExecutor:
    """This machine: ``num_proc`` processes (a fork pool per map), or inline when ``num_proc == 1``.
    A worker that dies stops the step with :class:`WorkerLost` (``concurrent.futures`` notices
    it, where ``multiprocessing.Pool`` would wait forever); the rerun keeps the finished partitions."""

    name = "local"

    def __init__(self, num_proc: int):
        self.num_proc = num_proc
        self.workers = num_proc

    def map(self, fn: Callable, items: Iterable, *, init: Callable | None = None, init_args: tuple = ()) -> Iterator:
        """``fn(item)`` for every item, in order."""
        if self.num_proc <= 1:
            yield from ordered_map(fn, items, num_proc=1, init=init, init_args=init_args)
            return
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        it = iter(items)
        with ProcessPoolExecutor(self.num_proc, mp_context=_mp_context(), initializer=_ensure_init,
                                 initargs=("local", init, init_args)) as pool:
            pending = [pool.submit(fn, item) for item in islice(it, 2 * self.num_proc)]
            while pending:
                try:
                    result = pending.pop(0).result()
                except BrokenProcessPool as exc:
                    raise WorkerLost(f"a worker process died ({exc}); rerun to resume from the finished "
                                     "partitions") from None
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                yield result

    def close(self) -> None:
        pass


def _ray_task(token: str, init: Callable | None, init_args: tuple, fn: Callable, item: Any) -> Any:
    _ensure_init(token, init, init_args)
    return fn(item)


class RayExecutor:
    """Ray tasks, one per item, at most ``2 x CPUs`` in flight, results taken in order."""

    name = "ray"

    def __init__(self, address: str | None, num_cpus: int | None, max_retries: int = 3):
        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "log_to_driver": False,
                            "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}
            if address:
                try:
                    ray.init(address=address, **kwargs)
                except ConnectionError as exc:
                    from patentgpt.config import ConfigError

                    raise ConfigError(f"ray.address: cannot join a Ray cluster at {address!r} ({exc}); start "
                                      "one with `ray start --head` or leave ray.address unset for a local Ray") \
                        from None
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
            self.started = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1, max_retries=max_retries)(_ray_task)

    def map(self, fn: Callable, items: Iterable, *, init: Callable | None = None, init_args: tuple = ()) -> Iterator:
        ray = self.ray
        token = uuid.uuid4().hex
        args_ref = ray.put(init_args)
        it = iter(items)
        window = 2 * self.workers
        pending = [self._remote.remote(token, init, args_ref, fn, item) for item in islice(it, window)]
        while pending:
            result = ray.get(pending.pop(0))
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self._remote.remote(token, init, args_ref, fn, nxt))
            yield result

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def make_executor(cfg) -> LocalExecutor | RayExecutor:
    if cfg.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from patentgpt.config import ConfigError

            raise ConfigError("executor: 'ray' needs Ray: pip install 'ray>=2.9'") from None
        return RayExecutor(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.max_retries)
    return LocalExecutor(cfg.num_proc)

