"""Learning-rate schedules as pure functions of the step (exactly reproducible on resume)."""

from __future__ import annotations

import math

from patentgpt.train.config import OptimSection


def lr_at(step: int, max_steps: int, cfg: OptimSection) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay to
    ``min_lr_ratio * lr``, or WSD (warmup, stable, then linear decay over ``decay_fraction``)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    decay_steps = max(1, int(round(cfg.decay_fraction * max_steps)))
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return peak + (floor - peak) * progress
