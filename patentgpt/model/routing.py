"""Routing controls for transformers' Mixtral router, installed in place on a built model.

:func:`install_routing` swaps the class of every layer's ``MixtralTopKRouter`` for
:class:`ControlledRouter`, a subclass whose forward adds, as ``model.router`` asks:

- **jitter**: multiplicative ``U(1-j, 1+j)`` noise on the router's input, in training only (the
  experts see the clean hidden states; transformers' own ``router_jitter_noise`` perturbs the
  experts' input too, in place, and stays 0 here);
- **auxiliary-loss-free balancing** (DeepSeek-V3): a per-expert bias added to the routing
  probabilities for the top-k *selection* only; the gate weights stay the unbiased probabilities
  (renormalised over the chosen k, as Mixtral does). :meth:`RoutingControl.end_step` moves the bias
  by ``rate x sign(mean load - load)`` from the load the step observed (summed over micro-batches
  and ranks);
- the count of (token, slot) pairs each expert received, during training.

The router's parameters, state-dict keys and outputs (logits, weights, indices) are transformers'
own, so output capture (``router_logits``), the load-balancing aux loss, ZeRO-3 leaf modules and
export are unchanged. The z-loss (ST-MoE) is computed from those router logits by the stage
(:func:`router_z_loss`).

The balancing bias is training state, not a weight: it is saved in every checkpoint through the
states protocol (``trainer_state.json``: ``routing``) and the export is a plain
``MixtralForCausalLM``, which cannot express a selection-only bias. So the bias steers selection
in training mode only; held-out evaluation, the export check and inference route on the learned
router alone, and the held-out loss therefore measures the model users get.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("patentgpt.routing")


def _router_base():
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    return MixtralTopKRouter


_CONTROLLED: dict[type, type] = {}


def _controlled_class(base: type) -> type:
    """``ControlledRouter`` over ``base`` (transformers' Mixtral router class)."""
    if base in _CONTROLLED.values():
        return base
    if base not in _CONTROLLED:
        _CONTROLLED[base] = type("ControlledRouter", (base,), {"forward": _controlled_forward,
                                                               "__module__": __name__})
    return _CONTROLLED[base]


def _controlled_forward(self, hidden_states):
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    if self.training and self.jitter > 0:
        noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        hidden_states = hidden_states * noise
    router_logits = F.linear(hidden_states, self.weight)  # (tokens, experts)
    probs = torch.softmax(router_logits.float(), dim=-1)
    if self.training and self.expert_bias is not None:
        if self.expert_bias.device != probs.device:
            self.expert_bias = self.expert_bias.to(probs.device)
        indices = torch.topk(probs + self.expert_bias, self.top_k, dim=-1).indices  # selection only
        top = probs.gather(-1, indices)
    else:
        top, indices = torch.topk(probs, self.top_k, dim=-1)
    top = top / top.sum(dim=-1, keepdim=True)
    if self.training:
        with torch.no_grad():
            counts = torch.bincount(indices.reshape(-1), minlength=self.num_experts)
            self.load = counts if self.load is None else self.load + counts.to(self.load.device)
    return router_logits, top, indices


def routers(model) -> list[torch.nn.Module]:
    """The Mixtral router of every layer, in order."""
    base = _router_base()
    return [m for m in model.modules() if isinstance(m, base)]


def router_z_loss(router_logits) -> torch.Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(logits)^2, averaged over layers."""
    return torch.stack([torch.logsumexp(lg.float(), dim=-1).pow(2).mean() for lg in router_logits]).mean()


def router_entropy(router_logits) -> list[float]:
    """Mean entropy (nats) of the routing distribution per layer."""
    out = []
    for lg in router_logits:
        logp = torch.log_softmax(lg.detach().float(), dim=-1)
        out.append(float(-(logp.exp() * logp).sum(-1).mean()))
    return out


class RoutingControl:
    """The routers of one model and their per-step bookkeeping (balancing bias, dead experts).
    Stateful through the checkpoint states protocol."""

    def __init__(self, model, cfg, *, world_reduce=None, verbose: bool = True):
        """``cfg``: a ``RouterSection``; ``world_reduce``: sums a list of floats over ranks;
        ``verbose``: log dead-expert warnings (rank 0)."""
        self.cfg = cfg
        self.verbose = verbose
        self.routers = routers(model)
        if not self.routers:
            raise ValueError("model has no Mixtral router to control")
        self.num_experts = self.routers[0].num_experts
        self.world_reduce = world_reduce
        for r in self.routers:
            r.__class__ = _controlled_class(type(r))
            r.jitter = float(cfg.jitter)
            r.expert_bias = (torch.zeros(r.num_experts, dtype=torch.float32)
                             if cfg.bias_update_rate > 0 else None)
            r.load = None
        self.zero_run = np.zeros((len(self.routers), self.num_experts), dtype=np.int64)
        self.steps = 0

    @property
    def bias(self) -> np.ndarray | None:
        if self.cfg.bias_update_rate <= 0:
            return None
        return np.stack([r.expert_bias.float().cpu().numpy() for r in self.routers])

    def end_step(self) -> np.ndarray:
        """Close a training step: [layers, experts] routed (token, slot) counts over every micro-batch
        and rank; updates the balancing bias and warns about experts that received nothing."""
        rows = []
        for r in self.routers:
            rows.append(np.zeros(self.num_experts) if r.load is None else r.load.double().cpu().numpy())
            r.load = None
        counts = np.stack(rows)
        if self.world_reduce is not None:
            counts = np.asarray(self.world_reduce(counts.reshape(-1).tolist())).reshape(counts.shape)
        self.steps += 1
        rate = self.cfg.bias_update_rate
        if rate > 0 and counts.sum() > 0:
            delta = rate * np.sign(counts.mean(axis=1, keepdims=True) - counts)
            for r, d in zip(self.routers, delta):
                r.expert_bias = r.expert_bias + torch.as_tensor(d, dtype=torch.float32, device=r.expert_bias.device)
        if counts.sum() > 0:
            self.zero_run = np.where(counts == 0, self.zero_run + 1, 0)
            n = self.cfg.dead_expert_steps
            if n:
                for layer, e in zip(*np.nonzero(self.zero_run == n)):
                    if self.verbose:
                        log.warning("expert %d of layer %d has received no tokens for %d steps", e, layer, n)
        return counts

    @staticmethod
    def metrics(counts: np.ndarray, entropy: list[float] | None = None) -> dict[str, float]:
        """Per layer: load share per expert, max/mean imbalance, router entropy."""
        record: dict[str, float] = {}
        imbalances = []
        for layer, row in enumerate(counts):
            total = row.sum()
            if total <= 0:
                continue
            for e, v in enumerate(row):
                record[f"expert_load/layer{layer}/e{e}"] = float(v / total)
            imbalances.append(float(row.max() / row.mean()))
            record[f"expert_imbalance/layer{layer}"] = imbalances[-1]
        if imbalances:
            record["expert_imbalance_max"] = max(imbalances)
        for layer, h in enumerate(entropy or []):
            record[f"router_entropy/layer{layer}"] = h
        return record

    def state_dict(self) -> dict:
        bias = self.bias
        return {"steps": self.steps, "zero_run": self.zero_run.tolist(),
                "bias": None if bias is None else bias.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        zero_run = np.asarray(state["zero_run"], dtype=np.int64)
        if zero_run.shape == self.zero_run.shape:
            self.zero_run = zero_run
        if state.get("bias") is not None and self.cfg.bias_update_rate > 0:
            bias = np.asarray(state["bias"], dtype=np.float32)
            if bias.shape != self.zero_run.shape:
                raise ValueError(f"routing state: bias of shape {bias.shape}, model routers {self.zero_run.shape}")
            for r, b in zip(self.routers, bias):
                r.expert_bias = torch.as_tensor(b, dtype=torch.float32, device=r.weight.device)


def plot_expert_load(records: list[dict], out: Path) -> Path | None:
    """expert_load.png: per layer, the share of routed tokens of every expert over the logging steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if any(k.startswith("expert_load/") for k in r)]
    if not rows:
        return None
    layers = sorted({int(k.split("/")[1][5:]) for k in rows[-1] if k.startswith("expert_load/")})
    experts = sorted({int(k.rsplit("/e", 1)[1]) for k in rows[-1] if k.startswith("expert_load/layer0/")})
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 1.2 + 1.1 * len(layers)), squeeze=False, sharex=True)
    im = None
    for ax, layer in zip(axes[:, 0], layers):
        grid = np.array([[r.get(f"expert_load/layer{layer}/e{e}", np.nan) for r in rows] for e in experts])
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(2.0 / len(experts), np.nanmax(grid)),
                       extent=(steps[0] - 0.5, steps[-1] + 0.5, len(experts) - 0.5, -0.5), interpolation="nearest")
        imb = rows[-1].get(f"expert_imbalance/layer{layer}")
        ax.set_ylabel(f"layer {layer}\nexpert", fontsize=8)
        if imb is not None:
            ax.set_title(f"layer {layer}: last max/mean load {imb:.2f}", fontsize=8, loc="right")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"expert load over training (share of routed tokens; uniform = {1 / len(experts):.3f})")
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
