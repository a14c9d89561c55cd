"""Optional GPU kernels behind transformers' hooks, imported lazily and checked at start.

``attn_implementation: flash_attention_2`` needs the flash-attn package and a CUDA device.

Experts (MoE) kernels all go through transformers' ``ExpertsInterface``: ``eager`` (the
per-expert loop of ``MixtralExperts.forward``) and transformers' own ``grouped_mm`` and
``batched_mm`` work on CPU and GPU; ``megablocks`` (dropless grouped GEMM) is registered there
by :func:`prepare_kernels` when a config asks for it. megablocks 0.10 pins ``torch>=2.7.0,<2.7.1``
(this project runs torch 2.13), so it lives in a separate GPU environment; asking for it
without the package fails before any heavy work with a message that says what to install.
UNTESTED HERE: flash-attn and megablocks need a GPU that this project's CI does not have.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "install the GPU extra on a CUDA node: pip install 'patentgpt[gpu]'"


class KernelUnavailable(RuntimeError):
    pass


def _require(module: str, feature: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise KernelUnavailable(f"{feature} needs the '{module}' package, which is not installed; {INSTALL_HINT}")


def _require_cuda(feature: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise KernelUnavailable(f"{feature} needs a CUDA GPU; on CPU use the sdpa / eager implementations")


# Experts implementations of transformers' ExpertsInterface that run on any device (CPU included).
PORTABLE_EXPERTS = ("eager", "grouped_mm", "batched_mm")
MEGABLOCKS_HINT = ("megablocks 0.10 pins torch>=2.7.0,<2.7.1 (this project runs torch 2.13), so install it in a "
                   "separate CUDA environment built on that torch: pip install 'megablocks==0.10.0' "
                   "(or 'patentgpt[gpu]'); on CPU use experts_implementation: grouped_mm")


def available_experts_implementations() -> list[str]:
    """Experts implementations that can run on this machine (megablocks: package and CUDA present)."""
    import torch

    found = list(PORTABLE_EXPERTS)
    if importlib.util.find_spec("megablocks") is not None and torch.cuda.is_available():
        register_megablocks()
        found.append("megablocks")
    return found


def register_megablocks() -> None:
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register("megablocks", megablocks_experts_forward)


def megablocks_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """Experts forward on megablocks' grouped GEMM (same contract as transformers' grouped_mm).

    hidden_states [T, H]; top_k_index / top_k_weights [T, K]; weights gate_up_proj [E, 2I, H]
    and down_proj [E, H, I] as transformers stores them.
    """
    import torch
    from megablocks import grouped_gemm_util as gg

    if getattr(self, "_is_expert_parallel", False):
        raise NotImplementedError("experts_implementation: megablocks does not handle transformers' expert-parallel "
                                  "sentinel routing; use grouped_mm with expert parallelism")

    num_top_k = top_k_index.size(-1)
    expert_ids = top_k_index.reshape(-1)
    weights = top_k_weights.reshape(-1)
    expert_ids_sorted, perm = torch.sort(expert_ids)
    x = hidden_states[perm // num_top_k]
    batch_sizes = torch.bincount(expert_ids_sorted, minlength=self.num_experts).cpu()
    gate_up = gg.ops.gmm(x, self.gate_up_proj, batch_sizes, trans_b=True)
    gate, up = gate_up.chunk(2, dim=-1)
    h = self.act_fn(gate) * up
    out = gg.ops.gmm(h, self.down_proj, batch_sizes, trans_b=True)
    out = out * weights[perm].unsqueeze(-1).to(out.dtype)
    final = torch.zeros_like(hidden_states)
    final.index_add_(0, perm // num_top_k, out.to(final.dtype))
    return final


def prepare_kernels(attn_implementation: str, experts_implementation: str | None = None) -> None:
    """Check (and register) the kernels a config asks for; raise KernelUnavailable if missing."""
    if attn_implementation == "flash_attention_2":
        _require("flash_attn", "attn_implementation: flash_attention_2")
        _require_cuda("attn_implementation: flash_attention_2")
    if experts_implementation == "megablocks":
        if importlib.util.find_spec("megablocks") is None:
            raise KernelUnavailable(f"experts_implementation: megablocks needs the 'megablocks' package, which is "
                                    f"not installed; {MEGABLOCKS_HINT}")
        _require_cuda("experts_implementation: megablocks")
        register_megablocks()
