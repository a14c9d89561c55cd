"""Expert parallelism for transformers' Mixtral through DeepSpeed's MoE layer.

With ``deepspeed.expert_parallel_size = E > 1`` every ``MixtralSparseMoeBlock`` of the built
model is replaced in place (after weights are loaded, before ``deepspeed.initialize``) by an
:class:`ExpertParallelBlock`:

- ``gate`` is transformers' own ``MixtralTopKRouter`` (the same module, weight and state-dict key
  ``...mlp.gate.weight``). It still runs, so transformers' output capture records its logits:
  the model's load-balancing aux loss (``router_aux_loss_coef``), the z-loss and the expert-load
  counts of :mod:`patentgpt.model.routing` are the ones a run without expert parallelism computes;
- ``moe`` is ``deepspeed.moe.layer.MoE`` (its expert-parallel process groups, its all-to-all,
  ZeRO-1/2 aware parameter groups and checkpoint files) whose gate reads the router's weight
  (DeepSpeed's own ``wg`` Linear is removed, so there is one router parameter) and whose local
  experts are Mixtral expert MLPs, ``down(act(gate x) * up x)``, holding this rank's slices of
  the fused ``gate_up_proj`` / ``down_proj``: EP rank r owns global experts r*L .. r*L+L-1
  (L = experts / E), DeepSpeed's order after its all-to-all.

Every rank builds (or loads) the whole model first and keeps its own experts: the start-up peak
is the full model per rank.

Why DeepSpeed's gating equals Mixtral's here (``deepspeed/moe/sharded_moe.py``, 0.19,
``top2gating``): softmax over the fp32 logits; first expert = argmax, second = argmax with the
first masked (``top2_2nd_expert_sampling=False``: no Gumbel noise); the two gate values divided by
their sum (Mixtral's renormalised top-2); ``drop_tokens=False`` sets the capacity to the largest
expert count (all-reduced over the EP group), so no token is dropped; no jitter
(``noisy_gate_policy=None``), no random token selection. Equal up to ties in the router
probabilities. k = 1 differs (``top1gating`` keeps the raw probability instead of Mixtral's
renormalised 1.0) and k > 2 is untested, so both are refused.

DeepSpeed's ``l_aux`` is not used: for top-2 it is ``E * sum_e P_e f1_e`` per layer, where
``f1_e`` counts only each token's *first* expert, while transformers' Mixtral loss is
``E * sum_e P_e (f1_e + f2_e)`` with ``P`` and ``f`` pooled over all layers' tokens (uniform
routing gives 1 for DeepSpeed, 2 for transformers). Keeping transformers' loss keeps the
objective of a run independent of the expert-parallel size.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Run configs whose stages are tested with expert parallelism (causal-LM stages).
EP_STAGES = ("PretrainConfig", "SFTConfig")
EXPERTS_PREFIX = ".moe.deepspeed_moe.experts.deepspeed_experts."


def check_expert_parallel(cfg) -> None:
    """Config-time refusals (ValueError naming the key; exit 2 through the config loader)."""
    ep = cfg.deepspeed.expert_parallel_size
    if ep <= 1:
        return
    key = "deepspeed.expert_parallel_size"
    m = cfg.model
    problems = []
    if type(cfg).__name__ not in EP_STAGES:
        problems.append(f"{key}: the {type(cfg).__name__} stage is untested with expert parallelism "
                        "(pretraining and SFT only)")
    if m.arch != "mixtral":
        problems.append(f"{key}: needs model.arch: mixtral (a dense model has no experts to split)")
    elif m.num_experts % ep:
        problems.append(f"{key} {ep} must divide model.num_experts {m.num_experts}")
    if m.experts_per_token != 2:
        problems.append(f"model.experts_per_token: {m.experts_per_token} with {key} > 1: DeepSpeed's gating matches "
                        "Mixtral's only for top-2 (top-1 keeps the raw probability where Mixtral renormalises "
                        "to 1; top-k > 2 is untested)")
    if cfg.deepspeed.zero_stage == 3:
        problems.append(f"deepspeed.zero_stage: 3 with {key} > 1: DeepSpeed's MoE layer trains with ZeRO-1/2 only")
    if cfg.deepspeed.zero_stage == 0:
        problems.append(f"deepspeed.zero_stage: 0 with {key} > 1: DeepSpeed's ZeRO-0 gradient clipping averages each "
                        "rank's norm over its own experts instead of the global norm (losses drift from the same "
                        "run without expert parallelism once a step is clipped); use ZeRO-1 or 2")
    if cfg.deepspeed.sequence_parallel_size > 1:
        problems.append(f"deepspeed.sequence_parallel_size with {key} > 1: not combined (untested)")
    if m.router.bias_update_rate > 0:
        problems.append(f"model.router.bias_update_rate with {key} > 1: DeepSpeed's gate selects on the plain "
                        "router probabilities and cannot apply the loss-free balancing bias")
    if m.router.jitter > 0:
        problems.append(f"model.router.jitter with {key} > 1: DeepSpeed's gate would route on the clean input")
    if m.experts_implementation in ("batched_mm", "megablocks"):
        problems.append(f"model.experts_implementation: {m.experts_implementation} with {key} > 1: the local experts "
                        "run DeepSpeed's per-expert loop (use eager)")
    if cfg.train.activation_checkpointing:
        problems.append(f"train.activation_checkpointing with {key} > 1: untested (the recomputed forward "
                        "repeats the all-to-all)")
    if cfg.train.compile:
        problems.append(f"train.compile with {key} > 1: untested (DeepSpeed's all-to-all under torch.compile)")
    if cfg.eval.suite.tasks:
        problems.append(f"eval.suite.tasks with {key} > 1: the benchmark suite runs on rank 0 alone, and an "
                        "expert-parallel forward needs every rank")
    if problems:
        raise ValueError("; ".join(problems))


class MixtralExpertMLP(nn.Module):
    """One Mixtral expert: ``down(act(x W_gate) * x W_up)`` with transformers' fused layout
    (``gate_up_proj [2I, H]``: gate rows then up rows; ``down_proj [H, I]``)."""

    def __init__(self, hidden: int, intermediate: int, act: str, dtype=torch.float32):
        super().__init__()
        from transformers.activations import ACT2FN

        self.gate_up_proj = nn.Parameter(torch.empty(2 * intermediate, hidden, dtype=dtype))
        self.down_proj = nn.Parameter(torch.empty(hidden, intermediate, dtype=dtype))
        self.act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up_proj).chunk(2, dim=-1)
        return F.linear(self.act_fn(gate) * up, self.down_proj)


class _RouterWeight:
    """Stands in for DeepSpeed's gate ``wg`` Linear: its ``weight`` is the Mixtral router's
    (a plain object, not a module, so the router is registered once)."""

    def __init__(self, router: nn.Module):
        self._router = router

    @property
    def weight(self) -> torch.Tensor:
        return self._router.weight


class ExpertParallelBlock(nn.Module):
    """A ``MixtralSparseMoeBlock`` computed by DeepSpeed's expert-parallel MoE layer."""

    def __init__(self, block: nn.Module, config, ep_size: int, ep_rank: int):
        super().__init__()
        from deepspeed.moe.layer import MoE

        experts = block.experts
        n, hidden, inter = experts.gate_up_proj.shape[0], config.hidden_size, experts.down_proj.shape[-1]
        dtype = experts.gate_up_proj.dtype
        self.gate = block.gate
        self.moe = MoE(hidden, expert=MixtralExpertMLP(hidden, inter, config.hidden_act, dtype=dtype),
                       num_experts=n, ep_size=ep_size, k=config.num_experts_per_tok, capacity_factor=1.0,
                       eval_capacity_factor=1.0, min_capacity=0, noisy_gate_policy=None, drop_tokens=False,
                       use_rts=False, top2_2nd_expert_sampling=False)
        gate = self.moe.deepspeed_moe.gate
        del gate.wg
        gate.wg = _RouterWeight(self.gate)
        local = self.moe.num_local_experts
        with torch.no_grad():
            for j, expert in enumerate(self.moe.deepspeed_moe.experts.deepspeed_experts):
                e = ep_rank * local + j
                expert.gate_up_proj.copy_(experts.gate_up_proj[e])
                expert.down_proj.copy_(experts.down_proj[e])
        self.moe.to(experts.gate_up_proj.device)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        self.gate(flat)  # recorded by transformers' output capture: aux loss, z-loss, expert load
        out, _, _ = self.moe(flat)  # DeepSpeed's l_aux differs from Mixtral's (module docstring)
        return out.reshape(shape)


def moe_blocks(model) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, block) of every Mixtral sparse MoE block."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, MixtralSparseMoeBlock):
                found.append((parent, name, child))
    return found


def ep_size_of(model) -> int:
    """The expert-parallel size of a (possibly converted) model: 1 without DeepSpeed MoE layers."""
    for m in model.modules():
        if isinstance(m, ExpertParallelBlock):
            return m.moe.ep_size
    return 1


def install_expert_parallel(model, ep_size: int) -> int:
    """Replace every Mixtral MoE block of ``model`` by an :class:`ExpertParallelBlock` over EP
    groups of ``ep_size`` ranks (DeepSpeed's groups, created here so this rank knows its experts);
    returns the number of blocks replaced."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    from patentgpt.config import ConfigError

    world = dist.get_world_size() if dist.is_initialized() else 1
    if world % ep_size:
        raise ConfigError(f"deepspeed.expert_parallel_size {ep_size} must divide the number of ranks {world}")
    blocks = moe_blocks(model)
    if not blocks:
        raise ConfigError("deepspeed.expert_parallel_size > 1: the model has no Mixtral sparse MoE block")
    name = f"ep_size_{ep_size}"
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    ep_rank = groups._get_expert_parallel_rank(name)
    for parent, attr, block in blocks:
        setattr(parent, attr, ExpertParallelBlock(block, model.config, ep_size, ep_rank))
    return len(blocks)


def expert_parallel_param_groups(model, cfg, make_groups) -> list[dict]:
    """The optimizer's parameter groups, expert parallelism installed when the config asks:
    ``make_groups(model)`` gives the ordinary groups, which are then split into DeepSpeed's MoE
    groups (expert parameters reduce over their expert-data-parallel group, not all ranks)."""
    ep = cfg.deepspeed.expert_parallel_size
    if ep <= 1:
        return make_groups(model)
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    install_expert_parallel(model, ep)
    groups = [{**g, "name": g.get("name", f"group{i}")} for i, g in enumerate(make_groups(model))]
    return split_params_into_different_moe_groups_for_optimizer(groups)


# -- checkpoints and export -----------------------------------------------------------------------

def saved_layout(ckpt: Path) -> tuple[int, int | None]:
    """(expert-parallel size, world size) a checkpoint was written with (its config.yaml and
    trainer_state.json)."""
    import json

    import yaml

    ep = 1
    cfg_file = Path(ckpt) / "config.yaml"
    if cfg_file.is_file():
        saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
        ep = int((saved.get("deepspeed") or {}).get("expert_parallel_size", 1))
    state_file = Path(ckpt) / "trainer_state.json"
    world = json.loads(state_file.read_text()).get("world_size") if state_file.is_file() else None
    return ep, world


def check_resume_layout(engine, ckpt: Path) -> None:
    """Refuse to resume across expert-parallel layouts: DeepSpeed's expert files and optimizer
    partitions are written per EP rank and its universal conversion does not reshard them."""
    import torch.distributed as dist

    from patentgpt.config import ConfigError

    world = dist.get_world_size() if dist.is_initialized() else 1

    saved_ep, saved_world = saved_layout(ckpt)
    ep = ep_size_of(engine.module)
    if saved_ep == ep and (ep == 1 or saved_world in (None, world)):
        return
    raise ConfigError(
        f"deepspeed.expert_parallel_size: {ckpt} was saved with expert_parallel_size {saved_ep} on "
        f"{saved_world} ranks; this run has {ep} on {world}. Resuming on another expert-parallel layout is not "
        f"supported: resume with the saved layout, or export the checkpoint (patentgpt export) and start a new "
        f"run from it with model.init_from")


def is_expert_parallel_checkpoint(ds_dir: Path) -> bool:
    return any(Path(ds_dir).glob("layer_*_expert_*_model_states.pt"))


_EXPERT_KEY = re.compile(r"^(?P<block>.*)" + re.escape(EXPERTS_PREFIX) + r"(?P<e>\d+)\.(?P<w>gate_up_proj|down_proj)$")


def expert_parallel_state_dict(ds_dir: Path, load) -> dict[str, torch.Tensor]:
    """transformers' Mixtral state dict from a DeepSpeed MoE checkpoint: the shared weights of
    ``mp_rank_00_model_states.pt`` and every expert of every EP rank (one file per layer and
    expert) stacked into the fused ``experts.gate_up_proj`` / ``experts.down_proj``. ``load``: a
    safe ``torch.load``. Weights are the module's (the training dtype)."""
    ds_dir = Path(ds_dir)
    module = load(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu")["module"]
    state = {k: v.float() for k, v in module.items() if EXPERTS_PREFIX not in k}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for f in sorted(ds_dir.glob("layer_*_expert_*_model_states.pt")):
        for key, value in load(f, map_location="cpu").items():
            m = _EXPERT_KEY.match(key)
            if m is None:
                raise RuntimeError(f"{f}: unexpected expert key {key}")
            experts.setdefault((m["block"], m["w"]), {})[int(m["e"])] = value.float()
    for (block, w), by_expert in experts.items():
        n = len(by_expert)
        if sorted(by_expert) != list(range(n)):
            raise RuntimeError(f"{ds_dir}: experts of {block}.{w} incomplete: {sorted(by_expert)}")
        state[f"{block}.experts.{w}"] = torch.stack([by_expert[e] for e in range(n)])
    return state
