"""The client optimizer handed to DeepSpeed: AdamW that can skip a flagged step.

It runs torch's fused AdamW kernel where torch has one for the device (CPU and CUDA in torch >= 2.4),
else the multi-tensor (``foreach``) one, never the per-parameter for-loop. DeepSpeed's own config
``optimizer`` block would give its FusedAdam (CUDA only) or, with ``torch_adam``, the unfused torch
AdamW; a client optimizer keeps torch's fused kernel on every device and ZeRO stage.
"""

from __future__ import annotations

import torch


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next ``step()`` is a no-op when ``skip_next`` is set.

    The trainer flags a step whose loss was non-finite or a spike (agreed across ranks) and
    DeepSpeed's wrappers then call ``step()`` as usual: weights and moments stay untouched,
    and DeepSpeed clears the gradients afterwards.
    """

    skip_next: bool = False

    def __init__(self, params, *, implementation: str = "auto", **kwargs):
        super().__init__(params, **kwargs, **adamw_kernel(implementation))

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


def fused_supported(device: str) -> bool:
    """Whether torch has a fused AdamW kernel for ``device`` ("cpu", "cuda", ...)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return device in _get_fused_kernels_supported_devices()


def adamw_kernel(implementation: str = "auto") -> dict:
    """torch.optim.AdamW keyword arguments choosing its kernel: ``auto`` (fused where torch has it
    for this machine's device, else foreach), ``fused``, ``foreach`` or ``for_loop``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if implementation == "auto":
        implementation = "fused" if fused_supported(device) else "foreach"
    if implementation == "fused" and not fused_supported(device):
        raise ValueError(f"optim.implementation: torch {torch.__version__} has no fused AdamW for {device}")
    return {"fused": implementation == "fused", "foreach": implementation == "foreach"}
