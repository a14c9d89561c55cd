"""What a training stage supplies to the core (:class:`patentgpt.train.trainer.Trainer`).

The core owns what every stage shares: DeepSpeed set-up, the step loop (schedule, gradient
accumulation, loss guard, ``stop_at_step``), checkpoints and resume, monitoring, export and its
check. A stage owns what differs, through the methods below; a new stage is a new file with a
subclass, never a second loop. Pretraining, SFT and the reward model are the stages in
``patentgpt/train/stages/``.

The loss of a step is normalised over the whole global batch: the core counts the *targets*
(tokens whose label counts, or preference pairs) of every micro-batch on every rank, and each
micro-batch's loss is its *sum* over targets divided by ``items_per_micro`` = global targets /
(accumulation steps x ranks). DeepSpeed then divides by the accumulation steps and averages
over ranks, so the update is the gradient of (sum over the global batch) / (global targets),
whatever the split into micro-batches and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class RunContext:
    """What the core knows of the run, handed to the stage's hooks."""

    cfg: Any
    rank: int
    world: int
    micro: int
    accum: int
    global_batch: int
    run_dir: Path
    dtype: torch.dtype
    tokenizer: Any = None
    model: Any = None  # the module DeepSpeed wraps (set once built)
    extras: dict = field(default_factory=dict)


class Stage:
    """Base class of training stages; the defaults fit a causal language model."""

    name = "stage"
    causal_lm = False  # whether benchmark tasks (eval.suite) can run on the model
    # Set by the core before every step: whether the step is a logging step. Statistics that cost
    # time (e.g. MoE expert load) are computed only then.
    log_step: bool = True

    def __init__(self, cfg):
        self.cfg = cfg

    # -- before any heavy start-up ------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        """Load the tokenizer (set ``ctx.tokenizer``) and data; check that they agree. Cheap errors here."""
        raise NotImplementedError

    def build_model(self, ctx: RunContext) -> torch.nn.Module:
        """The transformers model to train (the core calls this inside ZeRO-3 construction)."""
        raise NotImplementedError

    def make_loader(self, ctx: RunContext):
        """(Called once the engine exists: ``ctx.extras["engine"]``.) An object with ``next_step() -> list[dict]`` (this rank's micro-batches of the next global
        step), ``state_dict()`` and ``load_state_dict()``; saved and restored by the core."""
        raise NotImplementedError

    # -- every micro-batch ----------------------------------------------------------------------
    def count_targets(self, batch: dict) -> int:
        """Targets in a micro-batch (the loss's denominator counts these)."""
        raise NotImplementedError

    def micro_step(self, engine, batch: dict, items_per_micro: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one micro-batch: (loss to backpropagate, additive statistics). The loss is the
        micro-batch's sum over targets / ``items_per_micro`` plus any mean-type terms."""
        raise NotImplementedError

    def step_metrics(self, sums: dict[str, float], targets: int, ctx: RunContext) -> dict:
        """Metrics of a step from the statistics summed over micro-batches and ranks; must hold ``loss``."""
        return {"loss": sums["loss_sum"] / max(targets, 1)}

    # -- occasionally ---------------------------------------------------------------------------
    def evaluate(self, engine, ctx: RunContext) -> dict[str, float]:
        """Held-out metrics (every rank calls this; ZeRO-3 forwards are collective). {} if none."""
        return {}

    def states(self) -> dict:
        """Extra stateful parts of the stage (name -> object with state_dict/load_state_dict)."""
        return {}

    def extra_engines(self) -> dict:
        """Further DeepSpeed engines the stage trains (tag -> engine, e.g. PPO's critic); the core
        saves and restores them in every checkpoint beside the main one."""
        return {}

    def extra_files(self) -> dict:
        """Further files of a checkpoint (name -> writer(path), rank 0), e.g. a second model's config."""
        return {}

    def tokens_per_step(self, ctx: RunContext) -> int:
        """Tokens one global step processes (throughput and MFU)."""
        raise NotImplementedError

    def flops_per_token(self, ctx: RunContext) -> float:
        from patentgpt.model.flops import flops_per_token

        return flops_per_token(ctx.model.config, self.sequence_length())

    def sequence_length(self) -> int:
        return self.cfg.data.seq_len

    def probe(self) -> dict[str, torch.Tensor]:
        """Inputs for the check that the export reproduces the training model's outputs."""
        raise NotImplementedError

    def plots(self, run_dir: Path) -> list[Path]:
        """Stage-specific PNGs written at the end of a finished run."""
        return []

    def summary(self) -> dict:
        """Stage-specific entries of the run summary (e.g. records set aside)."""
        return {}
