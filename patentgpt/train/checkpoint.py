"""Atomic DeepSpeed checkpoints with trainer, loader and RNG state; keep-last-K; resume.

Layout of ``RUN_DIR/checkpoints/step_00000100/``::

    ds/                 DeepSpeed's files (model, optimizer and ZeRO partitions of every rank)
    rng/rank_00000.pt   per-rank RNG states (tensors only: loads with weights_only=True)
    trainer_state.json  step, world size, and the state_dict() of every named stateful part:
                        progress (tokens seen), loader position, loss guard, the stage's own state
    config.yaml         the resolved run config
    hf_config/          the model's transformers config (for export)
    tokenizer/          the run's tokenizer (for export)
    COMPLETE            written last, just before the directory is renamed into place

Every stateful part of a run goes through one protocol: an object with ``state_dict()`` (JSON
values) and ``load_state_dict(state)``, registered by name (see :class:`patentgpt.train.trainer.Trainer`).
A checkpoint is written under ``.tmp-step_*`` and renamed only when every rank has finished,
so a run killed mid-write leaves a hidden directory that resume ignores and removes.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from patentgpt.io import atomic_write_json, publish_dir
from patentgpt.train.dist import barrier

STEP_RE = re.compile(r"^step_(\d{8})$")
DS_TAG = "ds"
COMPLETE = "COMPLETE"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = complete_checkpoints(root)
    return ckpts[-1] if ckpts else None


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
        "python_version": int(random.getstate()[0]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, root: str | Path, step: int, states: dict, *, rank: int, keep_last: int,
                    extra_files: dict | None = None, meta: dict | None = None, extra_engines: dict | None = None) -> Path:
    """Save on every rank; returns the published directory.

    ``states``: name -> object with ``state_dict()``; ``meta``: plain values stored beside them;
    ``extra_files`` (rank 0): name -> writer(path); ``extra_engines``: tag -> a further DeepSpeed
    engine of the stage (e.g. PPO's critic), saved under its tag beside ``ds/``."""
    from patentgpt.train.engine import UNIVERSAL_INFO

    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    for tag, eng in {DS_TAG: engine, **(extra_engines or {})}.items():
        # DeepSpeed's MoE save writes the universal-checkpoint info itself (and refuses ours)
        info = {} if getattr(eng, "has_moe_layers", False) else dict(UNIVERSAL_INFO)
        eng.save_checkpoint(str(tmp), tag=tag, save_latest=False, client_state=info)
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    barrier()
    if rank == 0:
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
        trainer_state = {"step": step, **(meta or {}), **{name: obj.state_dict() for name, obj in states.items()}}
        atomic_write_json(tmp / "trainer_state.json", trainer_state)
        atomic_write_json(tmp / COMPLETE, {"step": step})
        publish_dir(tmp, final)
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def clean_incomplete(root: str | Path) -> list[Path]:
    """Remove leftovers of interrupted writes (rank 0 only)."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or (STEP_RE.match(p.name) and not (p / COMPLETE).is_file()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


UNIVERSAL_SUFFIX = "_universal"


def needs_universal(ckpt: Path, world: int, zero_stage: int) -> bool:
    """A ZeRO 1-3 checkpoint saved on another data-parallel size loads only as DeepSpeed's universal
    checkpoint (DeepSpeed refuses the partitions otherwise); ZeRO-0 loads on any size."""
    return zero_stage > 0 and int(read_trainer_state(ckpt).get("world_size", world)) != world


def convert_to_universal(ckpt: Path, tags: list[str]) -> None:
    """Convert each engine's partitions of ``ckpt`` with DeepSpeed's ``ds_to_universal`` (rank 0;
    written to a temporary folder and renamed, so an interrupted conversion is redone)."""
    import os
    import subprocess
    import sys

    for tag in tags:
        final = ckpt / f"{tag}{UNIVERSAL_SUFFIX}"
        if final.is_dir():
            continue
        tmp = ckpt / f".tmp-{tag}{UNIVERSAL_SUFFIX}"
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(ckpt / tag), "--output_folder", str(tmp), "--num_extract_workers", "2",
                               "--num_merge_workers", "1"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise RuntimeError(f"converting {ckpt / tag} to a universal checkpoint failed:\n{proc.stderr[-3000:]}")
        os.replace(tmp, final)


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / "trainer_state.json").read_text())


def load_checkpoint(engine, ckpt: Path, states: dict, *, rank: int, extra_engines: dict | None = None,
                    universal: bool = False) -> dict:
    """Restore DeepSpeed state (of every engine), this rank's RNG and every named state; returns the
    trainer state. ``universal``: load the engines' universal conversions (another world size)."""
    from patentgpt.model.expert_parallel import check_resume_layout

    check_resume_layout(engine, ckpt)  # same expert-parallel layout, or a clear refusal
    engines = {DS_TAG: engine, **(extra_engines or {})}
    if universal:
        if rank == 0:
            convert_to_universal(ckpt, list(engines))
        barrier()
    for tag, eng in engines.items():
        load_path, _ = eng.load_checkpoint(str(ckpt), tag=tag + (UNIVERSAL_SUFFIX if universal else ""),
                                           load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {ckpt / tag}")
    rng_file = ckpt / "rng" / f"rank_{rank:05d}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=True))
    trainer_state = read_trainer_state(ckpt)
    missing = [name for name in states if name not in trainer_state]
    if missing:
        raise RuntimeError(f"{ckpt}: trainer_state.json has no state for {missing}; it was written by "
                           "another stage or an older version")
    for name, obj in states.items():
        obj.load_state_dict(trainer_state[name])
    return trainer_state
