"""PPO's losses per response token: clipped policy loss, clipped value loss, entropy.

Each returns the *sum* over the masked tokens (the core divides by the global token count) and
additive statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) under ``logits / temperature``: [B, T, V], [B, T] -> [B, T] (float32)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the token distribution at every position: [B, T, V] -> [B, T]."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate ``max(-A r, -A clip(r, 1-e, 1+e))`` summed over masked tokens."""
    m = mask.float()
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip))
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip).float()
        approx_kl = (ratio - 1.0) - log_ratio  # k3 estimate of KL(old || new), >= 0
    loss_sum = (loss * m).sum()
    return loss_sum, {"policy_loss_sum": float(loss_sum.detach()), "clipped": float((clipped * m).sum()),
                      "approx_kl_sum": float((approx_kl * m).sum())}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``, summed."""
    m = mask.float()
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    loss_sum = (loss * m).sum()
    with torch.no_grad():
        vclip = ((values - old_values).abs() > clip).float()
    return loss_sum, {"value_loss_sum": float(loss_sum.detach()), "value_clipped": float((vclip * m).sum())}
