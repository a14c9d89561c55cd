"""The loss guard: a step whose loss is non-finite or spikes is skipped, too many in a row stop the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from patentgpt.errors import TrainingDiverged


@dataclass
class LossGuard:
    """Flags non-finite losses and spikes against a running mean of accepted losses."""

    spike_factor: float
    warmup_steps: int
    max_consecutive: int
    ema: float | None = None
    accepted: int = 0
    consecutive_bad: int = 0
    skipped_total: int = 0
    reasons: dict = field(default_factory=dict)

    def check(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non_finite"
        if self.ema is not None and self.accepted >= self.warmup_steps and loss > self.spike_factor * self.ema:
            return "spike"
        return None

    def record(self, loss: float, reason: str | None, step: int) -> None:
        if reason is None:
            self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
            self.accepted += 1
            self.consecutive_bad = 0
            return
        self.skipped_total += 1
        self.consecutive_bad += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.consecutive_bad >= self.max_consecutive:
            raise TrainingDiverged(
                f"step {step}: {self.consecutive_bad} consecutive bad steps (last: {reason}, loss {loss}); "
                f"stopping. Lower optim.lr, check the data, or resume from an earlier checkpoint.")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("ema", "accepted", "consecutive_bad", "skipped_total", "reasons")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
