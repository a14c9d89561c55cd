"""Metrics to ``RUN_DIR/metrics.jsonl`` and Weights & Biases; W&B trouble never stops training.

W&B start-up is bounded: in online mode the server is first probed with an HTTP request of
:data:`WANDB_PROBE_TIMEOUT_S` seconds, and ``wandb.init`` gets an init timeout of
:data:`WANDB_INIT_TIMEOUT_S`; an unreachable server or a failed online start falls back to offline
mode (sync later with ``wandb sync``) with one warning, instead of stalling every launch.
``metrics.jsonl`` is append-only: a torn last line (full disk, power loss) is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from pathlib import Path

from patentgpt.data.jsonl import iter_jsonl
from patentgpt.io import atomic_write_text
from patentgpt.train.config import WandbSection

WANDB_PROBE_TIMEOUT_S = float(os.environ.get("PATENTGPT_WANDB_PROBE_TIMEOUT", "3"))
WANDB_INIT_TIMEOUT_S = float(os.environ.get("PATENTGPT_WANDB_INIT_TIMEOUT", "15"))


def wandb_mode(cfg: WandbSection) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def unreachable(base_url: str, timeout: float | None = None) -> str | None:
    """None when ``base_url`` answers an HTTP request (any status) within ``timeout`` s, else why not:
    no DNS, no route, connection refused, or a server that accepts connections but does not answer."""
    import urllib.error
    import urllib.request

    timeout = WANDB_PROBE_TIMEOUT_S if timeout is None else timeout
    try:
        urllib.request.urlopen(base_url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{base_url} did not answer within {timeout:g} s ({type(reason).__name__}: {reason})"
    return None


def _init_wandb(mode: str, **kwargs):
    """``wandb.init`` bounded in time; online trouble falls back to offline with one warning."""
    import wandb

    if mode == "online":
        problem = unreachable(os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url)
        if problem is None:
            try:
                return wandb.init(mode="online", settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S), **kwargs)
            except Exception as exc:  # noqa: BLE001 - a failed online start must not cost the run
                problem = f"online start failed: {type(exc).__name__}: {exc}"
                wandb.teardown()  # forget the half-started run, or offline init finds its id "in use"
        warnings.warn(f"W&B server not reachable ({problem}); logging offline for this run "
                      f"(upload later with `wandb sync`)", stacklevel=3)
        mode = "offline"
    return wandb.init(mode=mode, **kwargs)


class Monitor:
    """Rank 0 logs; other ranks hold a Monitor that does nothing."""

    def __init__(self, run_dir: str | Path, config: dict, cfg: WandbSection, *, run_name: str,
                 enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.run = None
        self.path = Path(run_dir) / "metrics.jsonl"
        if not enabled:
            return
        self._truncate_after(resume_step)
        mode = wandb_mode(cfg)
        if mode == "disabled":
            return
        try:
            id_file = Path(run_dir) / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.run = _init_wandb(mode, project=cfg.project, entity=cfg.entity, group=cfg.group, tags=cfg.tags,
                                   name=run_name, id=run_id, resume="allow", dir=str(run_dir), config=config)
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
            warnings.warn(f"W&B disabled for this run: {type(exc).__name__}: {exc}")
            self.run = None

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be logged again)."""
        if not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path.parent) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.run is not None:
            try:
                self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"W&B log failed, continuing without it: {exc}")
                self.run = None

    def log_files(self, paths: list[Path]) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({p.stem: wandb.Image(str(p)) for p in paths if p.is_file()})
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"W&B image upload failed: {exc}")

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"W&B finish failed: {exc}")
            self.run = None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Records of ``RUN_DIR/metrics.jsonl``; unreadable lines (a torn last line) are skipped, with a warning."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records, bad = [], []
    for lineno, record, reason in iter_jsonl(path):
        if reason is None and isinstance(record.get("step"), int):
            records.append(record)
        else:
            bad.append(f"line {lineno} ({reason or 'no step'})")
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) (a torn last line means the run was "
                      f"cut off while logging): {', '.join(bad[:5])}", stacklevel=2)
    return records
