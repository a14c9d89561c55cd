"""One way to measure: variants interleaved, repeated, warm-up dropped, ratios with their spread.

Every `bench/*.py` script measures through `compare`:

    from harness import compare, emit          # bench/ is on sys.path when a script runs
    result = compare({"ours": run_ours, "trainer_packed": run_trainer},
                     baseline="trainer_packed", repeats=5, warmup=1, unit="tokens")
    emit(result, extra={...})

A variant is a callable that does one measured unit of work and returns `(work, seconds)`:
work in the unit being compared (tokens, texts, items) and the seconds it took (the callable times
itself, so set-up it does not want counted stays outside). Rounds run every variant once, in an
order that alternates (A B C, then C B A, ...) so slow drift of the machine lands on both sides.
Throughput is the sum of work over the sum of time of the measured rounds; the ratio of each round
is variant / baseline within that round, reported as median, min and max. The JSON also names the
machine (cores, torch threads, load) and the exact command.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

Variant = Callable[[], "tuple[float, float]"]


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
    return info


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def spread(values: list[float], digits: int = 3) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def compare(variants: dict[str, Variant], *, baseline: str, repeats: int = 5, warmup: int = 1,
            unit: str = "tokens", progress: bool = True) -> dict:
    """Run `variants` interleaved for `warmup` + `repeats` rounds and compare each with `baseline`."""
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {sorted(variants)}")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    names = list(variants)
    work = {n: [] for n in names}
    secs = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(warmup + repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            w, s = variants[n]()
            if s <= 0:
                raise ValueError(f"variant {n!r} reported {s} seconds")
            if r >= warmup:
                work[n].append(float(w))
                secs[n].append(float(s))
        if progress:
            tag = "warm-up" if r < warmup else f"round {r - warmup + 1}/{repeats}"
            rates = ", ".join(f"{n} {work[n][-1] / secs[n][-1]:.1f}" for n in names if secs[n]) if r >= warmup else ""
            print(f"[bench] {tag} {rates} {unit}/s", file=sys.stderr, flush=True)
    rate = {n: sum(work[n]) / sum(secs[n]) for n in names}
    out = {
        "unit": unit,
        "baseline": baseline,
        "repeats": repeats,
        "warmup_dropped": warmup,
        f"{unit}_per_s": {n: round(rate[n], 2) for n in names},
        "per_round": {n: [round(w / s, 2) for w, s in zip(work[n], secs[n])] for n in names},
        "ratio_vs_baseline": {},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    for n in names:
        if n == baseline:
            continue
        per_round = [(work[n][i] / secs[n][i]) / (work[baseline][i] / secs[baseline][i]) for i in range(repeats)]
        out["ratio_vs_baseline"][n] = {**spread(per_round), "of_sums": round(rate[n] / rate[baseline], 3)}
    return out


def timed(fn: Callable[[], float]) -> Variant:
    """Wrap `fn() -> work` into a variant that times it."""
    def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        w = fn()
        return w, time.perf_counter() - t0
    return run


class subprocess_variant:
    """A variant run as its own process each time (variants then alternate processes, and none of
    them inherits another's warm caches, threads or process group). The command's last stdout line is
    a JSON object holding ``work`` (the key named by ``work``) and ``seconds``, timed by the child
    itself so start-up stays outside; every parsed object is kept in ``records``."""

    def __init__(self, cmd: list[str], *, work: str = "work", env: dict | None = None, timeout: float = 1800):
        self.cmd, self.work, self.env, self.timeout = cmd, work, env, timeout
        self.records: list[dict] = []

    def __call__(self) -> tuple[float, float]:
        import subprocess

        proc = subprocess.run(self.cmd, capture_output=True, text=True, env=self.env, timeout=self.timeout)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"variant command failed ({proc.returncode}): {' '.join(self.cmd)}\n"
                               f"{proc.stderr[-3000:]}")
        record = json.loads(lines[-1])
        self.records.append(record)
        return float(record[self.work]), float(record["seconds"])


def emit(result: dict, *, extra: dict | None = None, out: str | Path | None = None) -> dict:
    """Print the benchmark's JSON (machine and command included) and optionally write it to `out`."""
    doc = {"command": command(), "machine": machine(), **result, **(extra or {})}
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return doc
