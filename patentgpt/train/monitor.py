"""Metrics to ``RUN_DIR/metrics.jsonl`` and Weights & Biases; W&B trouble never stops training."""

from __future__ import annotations

import json
import secrets
import os
import warnings
from pathlib import Path

from patentgpt.train.config import WandbSection


def wandb_mode(cfg: WandbSection) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


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
            import wandb

            id_file = Path(run_dir) / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=cfg.tags,
                                  name=run_name, id=run_id, resume="allow", dir=str(run_dir), mode=mode,
                                  config=config)
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
            warnings.warn(f"W&B disabled for this run: {type(exc).__name__}: {exc}")
            self.run = None

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be logged again)."""
        if not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

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
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
