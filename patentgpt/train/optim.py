"""The client optimizer handed to DeepSpeed: AdamW that can skip a flagged step."""

from __future__ import annotations

import torch


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next ``step()`` is a no-op when ``skip_next`` is set.

    The trainer flags a step whose loss was non-finite or a spike (agreed across ranks) and
    DeepSpeed's wrappers then call ``step()`` as usual: weights and moments stay untouched,
    and DeepSpeed clears the gradients afterwards.
    """

    skip_next: bool = False

    @torch.no_grad()
    def step(self, closure=None):
        if self.skip_next:
            self.skip_next = False
            return None
        return super().step(closure)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices; none on norms, biases and other vectors."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
