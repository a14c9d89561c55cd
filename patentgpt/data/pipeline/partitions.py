"""Resumable stages of partition tasks.

A step splits its work into numbered partitions (a fixed number of input lines, or a hash bucket).
Each partition is one task on the executor: it writes its outputs under the stage's directory
(``<step tmp>/parts/<stage>/``) and, last, ``NNNNN.done.json`` holding its small result and the
peak memory of the worker. A step killed mid-way (a worker lost, the driver killed) keeps its
temporary directory; the rerun finds the partitions whose ``done`` file is there and submits only
the others, so the step is redone from its last finished partitions, not from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from patentgpt.data.pipeline.executor import fault_point, measured
from patentgpt.io import atomic_write_json

PARTS = "parts"


def done_path(stage_dir: Path | str, p: int) -> Path:
    return Path(stage_dir) / f"{p:05d}.done.json"


def _partition_task(item: tuple) -> dict:
    stage_dir, stage, p, fn, payload = item
    result, mem = measured(lambda x: fn(stage_dir, p, x), payload)
    fault_point(f"worker-{stage}-{p}")  # test hook: the worker dies before its partition is recorded
    done = {"partition": p, "result": result, "memory": mem}
    atomic_write_json(done_path(stage_dir, p), done)
    return done


def run_stage(executor, stage_dir: Path, items: Iterable[tuple[int, Any]], fn: Callable[[str, int, Any], Any], *,
              init: Callable | None = None, init_args: tuple = (), total: int | None = None,
              desc: str | None = None) -> tuple[list, dict]:
    """Run ``fn(stage_dir, p, payload)`` for every ``(p, payload)`` not done before; returns the
    results in partition order and the stage's memory summary (peak RSS per worker task)."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    stage = stage_dir.name
    done: dict[int, dict] = {}
    reused = 0

    def todo():
        nonlocal reused
        for p, payload in items:
            prev = _read(done_path(stage_dir, p))
            if prev is not None:
                done[p] = prev
                reused += 1
                bar.update(1)
                continue
            yield str(stage_dir), stage, p, fn, payload

    bar = tqdm(total=total, desc=desc or stage, unit="part", leave=False)
    for res in executor.map(_partition_task, todo(), init=init, init_args=init_args):
        done[res["partition"]] = res
        bar.update(1)
        fault_point(f"driver-{stage}-{res['partition']}")  # test hook: the driver dies mid-stage
    bar.close()
    order = sorted(done)
    mems = [done[p]["memory"] for p in order]
    summary = {"partitions": len(order), "resumed": reused,
               "peak_rss_mb_max": max((m["peak_rss_mb"] for m in mems), default=0.0),
               "workers": len({m["pid"] for m in mems}),
               "task_seconds": round(sum(m["seconds"] for m in mems), 3)}
    return [done[p]["result"] for p in order], summary


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def line_partitions(lines: Iterable[str], size: int) -> Iterable[tuple[int, list[str]]]:
    """``(p, lines)`` of ``size`` consecutive lines each (the last may be shorter)."""
    batch: list[str] = []
    p = 0
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield p, batch
            batch, p = [], p + 1
    if batch:
        yield p, batch


def part_file(stage_dir: Path | str, p: int, suffix: str) -> Path:
    return Path(stage_dir) / f"{p:05d}.{suffix}"

