"""Per-token KL penalty against the reference model and the KL coefficient (fixed or adaptive)."""

from __future__ import annotations

import torch


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Estimate of KL(actor || reference) at each sampled token (Schulman's k1 / k3).

    k1 = log pi - log pi_ref (unbiased, may be negative); k3 = (r - 1) - log r with
    r = pi_ref / pi (unbiased, never negative, lower variance)."""
    log_ratio = logp.float() - ref_logp.float()
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k3)")


class KLController:
    """The KL coefficient. With a ``target``, adapted after every rollout as in Ziegler et al. (2019):
    ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon`` (n = sequences in the rollout)."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000):
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n / self.horizon

    def state_dict(self) -> dict:
        return {"coef": self.coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])
