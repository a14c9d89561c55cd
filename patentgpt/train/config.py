"""Schemas of training runs: the sections every stage shares, and each stage's config.

Every stage config is a :class:`TrainConfigBase` (run, model, optim, train, deepspeed,
checkpoint, logging, eval) plus its own ``data`` section: pretraining reads token shards,
SFT reads chat records, the reward model reads preference pairs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from patentgpt.config import ConfigError, Section
from patentgpt.eval.harness import EvalDuringTraining
from patentgpt.model.config import ModelSection


class RunSection(Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 1234


def unique_source_names(sources) -> None:
    names = [s.name for s in sources]
    if len(names) != len(set(names)):
        raise ValueError(f"data.sources: duplicate source names {names}")


def require_tokenizer(cfg) -> None:
    """SFT and RM read the tokenizer of ``model.init_from`` unless ``data.tokenizer`` names one."""
    if not cfg.model.init_from and not cfg.data.tokenizer:
        raise ValueError("data.tokenizer: required when model.init_from is not set")


class SourceSpec(Section):
    name: str
    path: str
    weight: float = Field(1.0, gt=0)


class DataSection(Section):
    mixture: str | None = Field(None, description="mixture.yaml written by `patentgpt data run`; its "
                                "tokenizer and sources (paths relative to it) replace data.tokenizer/sources")
    tokenizer: str = Field(..., description="HF tokenizer directory used to make the shards")
    sources: list[SourceSpec] = Field(..., min_length=1)
    seq_len: int = Field(512, ge=8)
    add_bos: bool = True
    document_masking: bool = Field(False, description="packed documents do not attend to each other: "
                                   "position_ids restart at each document, no loss across a boundary")

    @model_validator(mode="before")
    @classmethod
    def _from_mixture(cls, data):
        """Read ``tokenizer`` and ``sources`` from a pipeline's mixture.yaml (data.mixture)."""
        if not isinstance(data, dict) or not data.get("mixture"):
            return data
        from pathlib import Path

        import yaml

        path = Path(data["mixture"])
        if not path.is_file():
            raise ValueError(f"data.mixture: {path} not found (run `patentgpt data run` first)")
        try:
            mix = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"data.mixture: {path} is not valid YAML: {exc}") from None
        if not isinstance(mix, dict) or not isinstance(mix.get("sources"), list):
            raise ValueError(f"data.mixture: {path} has no 'sources' list")
        out = dict(data)
        out["sources"] = [{"name": s["name"], "weight": s["weight"],
                           "path": str(path.parent / s["path"]) if not Path(s["path"]).is_absolute() else s["path"]}
                          for s in mix["sources"]]
        out["tokenizer"] = mix.get("tokenizer") or out.get("tokenizer")
        return out

    @model_validator(mode="after")
    def _unique(self):
        unique_source_names(self.sources)
        return self


class OptimSection(Section):
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps spent decaying")
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = Field(
        "auto", description="AdamW kernel: auto = torch's fused one where the device has it, else foreach")


class TrainSection(Section):
    max_steps: int = Field(1000, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    grad_accum_steps: int | None = Field(None, ge=1)
    global_batch_size: int | None = Field(None, ge=1)
    stop_at_step: int | None = Field(None, ge=1, description="checkpoint and stop early (time-limited jobs); "
                                     "a later launch resumes, schedule unchanged")
    precision: Literal["bf16", "fp32"] = "bf16"
    activation_checkpointing: bool = False
    autocast: bool = Field(False, description="with precision fp32: forward and backward under bf16 autocast "
                           "(DeepSpeed torch_autocast); weights, gradients and AdamW stay fp32")
    compile: bool = Field(False, description="torch.compile the model (DeepSpeed engine.compile); off by "
                          "default: see the README's benchmark section for what it gives here")
    grad_clip: float = Field(1.0, ge=0)
    # Loss spikes and non-finite losses
    spike_factor: float = Field(4.0, gt=1, description="skip a step whose loss exceeds factor x running mean")
    spike_warmup_steps: int = Field(20, ge=0, description="steps before spike detection starts")
    max_consecutive_bad_steps: int = Field(5, ge=1)


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    overlap_comm: bool = True
    extra: dict[str, Any] = Field(default_factory=dict, description="merged into the generated DeepSpeed config")
    sequence_parallel_size: int = Field(1, ge=1, description="Ulysses sequence parallelism (pretraining): "
                                        "each sequence split over this many ranks")
    # Expert parallelism (MoE; patentgpt/model/expert_parallel.py, README "Mixture of experts")
    expert_parallel_size: int = Field(1, ge=1, description="ranks that split a MoE layer's experts (DeepSpeed's "
                                      "MoE layer in place of each Mixtral block; ZeRO-1/2, top-2)")


class CheckpointSection(Section):
    every_steps: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    resume: Literal["auto", "never"] = "auto"
    export_at_end: bool = True


class WandbSection(Section):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "patentgpt"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class LoggingSection(Section):
    every_steps: int = Field(10, ge=1)
    peak_tflops: float | None = Field(None, gt=0, description="override the device peak used for MFU")
    wandb: WandbSection = Field(default_factory=WandbSection)


class EvalSection(Section):
    every_steps: int | None = Field(None, ge=1, description="evaluate the held-out split every N steps "
                                    "(and at the end); default: only at the end when holdout > 0")
    holdout: float = Field(0.0, ge=0, lt=1, description="share of each source's documents / records held "
                           "out of training for validation (at least one when > 0)")
    max_batches: int = Field(8, ge=1, description="validation micro-batches per source")
    at_start: bool = Field(True, description="also evaluate before the first step (step 0)")
    suite: "EvalDuringTraining" = Field(default_factory=lambda: EvalDuringTraining(),
                                        description="IP benchmark tasks (evals/) run during training")


class TrainConfigBase(Section):
    """What every training stage shares; a stage adds its ``data`` section."""

    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _check_schedule(self):
        from patentgpt.config.checks import check_train_static

        check_train_static(self)  # run.name, deepspeed.extra
        from patentgpt.model.expert_parallel import check_expert_parallel

        check_expert_parallel(self)  # deepspeed.expert_parallel_size and what it does not combine with
        if self.train.autocast and self.train.precision != "fp32":
            raise ValueError("train.autocast: bf16 autocast runs on fp32 weights; set train.precision: fp32")
        if self.optim.warmup_steps >= self.train.max_steps and self.train.max_steps > 1:
            raise ValueError(f"optim.warmup_steps {self.optim.warmup_steps} must be < train.max_steps "
                             f"{self.train.max_steps}")
        return self


class PretrainConfig(TrainConfigBase):
    data: DataSection

    @model_validator(mode="after")
    def _check(self):
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(f"model.max_position_embeddings: {self.model.max_position_embeddings} is below "
                             f"data.seq_len {self.data.seq_len}; raise it (stage 2: with model.rope_theta or "
                             f"model.rope_scaling)")
        return self


class ChatSourceSpec(Section):
    name: str
    path: str = Field(..., description="JSONL or JSON array: chat `messages`, alpaca or sharegpt records")
    weight: float = Field(1.0, gt=0, description="sampling weight of this source among the others")
    format: Literal["auto", "messages", "alpaca", "sharegpt"] = "auto"


class SFTDataSection(Section):
    tokenizer: str | None = Field(None, description="HF tokenizer dir with a chat template; default: "
                                  "model.init_from's")
    sources: list[ChatSourceSpec] = Field(..., min_length=1)
    seq_len: int = Field(512, ge=8)
    packing: bool = Field(True, description="several conversations per sequence, no attention across them")

    @model_validator(mode="after")
    def _unique(self):
        unique_source_names(self.sources)
        return self


class SFTConfig(TrainConfigBase):
    data: SFTDataSection

    @model_validator(mode="after")
    def _check(self):
        if self.data.seq_len > self.model.max_position_embeddings and not self.model.init_from:
            raise ValueError(f"data.seq_len {self.data.seq_len} exceeds model.max_position_embeddings "
                             f"{self.model.max_position_embeddings}")
        require_tokenizer(self)
        return self


class PairSourceSpec(Section):
    name: str
    path: str = Field(..., description="JSONL / JSON array of preference pairs (prompt or messages, chosen, "
                      "rejected; sharegpt DPO; hh-rlhf dialogues), .gz read transparently")
    weight: float = Field(1.0, gt=0)


class PairDataSection(Section):
    tokenizer: str | None = Field(None, description="default: model.init_from's")
    sources: list[PairSourceSpec] = Field(..., min_length=1)
    max_len: int = Field(512, ge=8, description="prompt + response tokens; longer pairs are set aside")

    @model_validator(mode="after")
    def _unique(self):
        unique_source_names(self.sources)
        return self


class RewardConfig(TrainConfigBase):
    data: PairDataSection

    @model_validator(mode="after")
    def _check(self):
        require_tokenizer(self)
        return self


def resolve_batch(cfg: TrainConfigBase, world_size: int) -> tuple[int, int, int]:
    """(micro, accum, global) agreeing with ``world_size``; raises ConfigError naming the keys."""
    t = cfg.train
    micro = t.micro_batch_size
    if t.global_batch_size is None:
        accum = t.grad_accum_steps or 1
        return micro, accum, micro * accum * world_size
    per_step = micro * world_size
    if t.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size {t.global_batch_size} is not divisible by train.micro_batch_size "
            f"{micro} x world size {world_size}")
    accum = t.global_batch_size // per_step
    if t.grad_accum_steps is not None and t.grad_accum_steps != accum:
        raise ConfigError(
            f"train.grad_accum_steps {t.grad_accum_steps} disagrees with train.global_batch_size "
            f"{t.global_batch_size} = micro {micro} x accum {accum} x world {world_size}")
    return micro, accum, t.global_batch_size


class PromptDataSection(Section):
    tokenizer: str | None = Field(None, description="HF tokenizer dir with a chat template; default: "
                                  "model.init_from's")
    sources: list[ChatSourceSpec] = Field(..., min_length=1, description="chat JSONL: a record's prompt is its "
                                          "conversation without the final assistant turn (kept as the "
                                          "reference answer), or a conversation ending with a user turn")
    max_prompt_len: int = Field(256, ge=4, description="prompt tokens; longer prompts are set aside")

    @model_validator(mode="after")
    def _unique(self):
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"data.sources: duplicate source names {names}")
        return self


class PPOSection(Section):
    """PPO (actor = the core's engine, from model.init_from = the SFT export)."""

    ref_from: str | None = Field(None, description="frozen reference model; default: model.init_from (a copy "
                                 "of the actor's initial weights when that is null)")
    critic_from: str | None = Field(None, description="reward-model export the critic starts from (its score "
                                    "head read at every token gives the values); null: fresh from `model`")
    reward_model: str | None = Field(None, description="frozen reward-model export (score at the end of the "
                                     "response); null: only the programmatic reward")
    reward_fn: str | None = Field(None, description="programmatic reward: a name in "
                                  "patentgpt.train.stages.ppo.rewards.REWARDS or 'module:function'")
    reward_fn_args: dict[str, Any] = Field(default_factory=dict)
    reward_fn_weight: float = 1.0
    normalize_reward: bool = Field(True, description="reward-model score minus running mean, over running std")
    reward_clip: float = Field(10.0, gt=0, description="the total score is clipped to [-clip, clip]")
    rollout_batch_size: int = Field(64, ge=1, description="prompts (one response each) per PPO iteration, all ranks")
    generation_batch_size: int = Field(8, ge=1, description="prompts per generate() call")
    ppo_epochs: int = Field(1, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    kl_coef: float = Field(0.01, ge=0, description="initial (or fixed) KL coefficient")
    kl_target: float | None = Field(None, gt=0, description="turns on the adaptive KL controller (Ziegler et al.)")
    kl_horizon: int = Field(10000, ge=1)
    kl_estimator: Literal["k1", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    clip_ratio: float = Field(0.2, gt=0)
    value_clip: float = Field(0.2, gt=0)
    entropy_coef: float = Field(0.0, ge=0)
    whiten_advantages: bool = True
    critic_lr: float = Field(9e-6, gt=0, description="critic learning rate (same schedule shape as optim.lr)")
    samples_per_iteration: int = Field(4, ge=0, description="responses written to samples.jsonl per iteration")
    eval_samples: int = Field(1, ge=1, description="sampled responses per held-out prompt (their mean reward is "
                              "the prompt's: less sampling noise in val/reward)")


class PPOConfig(TrainConfigBase):
    data: PromptDataSection
    ppo: PPOSection = Field(default_factory=PPOSection)

    @model_validator(mode="after")
    def _check(self):
        p, t = self.ppo, self.train
        if not self.model.init_from and not self.data.tokenizer:
            raise ValueError("data.tokenizer: required when model.init_from is not set")
        if p.reward_model is None and p.reward_fn is None:
            raise ValueError("ppo.reward_model / ppo.reward_fn: at least one reward is required")
        if t.global_batch_size is None:
            raise ValueError("train.global_batch_size: required for PPO (sequences per optimizer step)")
        if p.rollout_batch_size % t.global_batch_size:
            raise ValueError(f"ppo.rollout_batch_size {p.rollout_batch_size} must be a multiple of "
                             f"train.global_batch_size {t.global_batch_size}")
        per_rollout = p.ppo_epochs * p.rollout_batch_size // t.global_batch_size
        for key, value in (("train.max_steps", t.max_steps), ("train.stop_at_step", t.stop_at_step),
                           ("checkpoint.every_steps", self.checkpoint.every_steps)):
            if value is not None and value % per_rollout:
                raise ValueError(f"{key} {value} must be a multiple of the {per_rollout} optimizer steps of one "
                                 f"PPO iteration (ppo_epochs x rollout_batch_size / global_batch_size): "
                                 "checkpoints fall on iteration boundaries")
        return self

    def steps_per_iteration(self) -> int:
        return self.ppo.ppo_epochs * self.ppo.rollout_batch_size // self.train.global_batch_size
