"""Generalised advantage estimation over masked response tokens, and masked whitening.

Rows are responses, right-padded: ``mask[b, t]`` is 1 for the response's tokens (a prefix of
the row). ``values[b, t]`` is the critic's value of the state before token ``t``; the state
after the last token is terminal (value 0).
"""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both zero outside ``mask``."""
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    rewards, values, mask = rewards.to(dtype), values.to(dtype), mask.to(dtype)
    values = values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        nxt_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        nxt_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt_value * nxt_mask - values[:, t]
        last = (delta + gamma * lam * nxt_mask * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """(sum, sum of squares, count) of ``x`` where ``mask`` (to reduce over ranks)."""
    m = mask.float()
    return float((x * m).sum()), float((x * x * m).sum()), float(m.sum())


def whiten(x: torch.Tensor, mask: torch.Tensor, moments: tuple[float, float, float] | None = None,
           eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the masked entries (moments may come from every rank); 0 outside."""
    s, ss, n = moments or masked_moments(x, mask)
    mean = s / max(n, 1.0)
    var = max(ss / max(n, 1.0) - mean * mean, 0.0)
    return (x - mean) / (var ** 0.5 + eps) * mask.float()
