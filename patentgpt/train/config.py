"""Schema of a pretraining run (``configs/pretrain/*.yaml``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from patentgpt.config import ConfigError, Section


class RunSection(Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 1234


class ModelSection(Section):
    arch: Literal["llama", "mixtral"] = "llama"
    init_from: str | None = Field(None, description="HF model directory to continue pretraining from")
    trust_remote_code: bool = False
    vocab_size: int | None = Field(None, ge=8, description="default: the tokenizer's size rounded up to 64")
    hidden_size: int = Field(256, ge=8)
    intermediate_size: int = Field(688, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(None, ge=1, description="grouped-query attention; default num_heads")
    max_position_embeddings: int = Field(4096, ge=16)
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # Mixture of experts (arch: mixtral)
    num_experts: int = Field(8, ge=1)
    experts_per_token: int = Field(2, ge=1)
    router_aux_loss_coef: float = Field(0.01, ge=0)
    # Kernels
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    experts_implementation: Literal["eager", "grouped_mm", "megablocks"] = "eager"

    @model_validator(mode="after")
    def _check(self):
        kv = self.num_kv_heads or self.num_heads
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size {self.hidden_size} is not divisible by model.num_heads {self.num_heads}")
        if self.num_heads % kv:
            raise ValueError(f"model.num_heads {self.num_heads} is not divisible by model.num_kv_heads {kv}")
        if self.experts_per_token > self.num_experts:
            raise ValueError("model.experts_per_token exceeds model.num_experts")
        if self.arch == "llama" and self.experts_implementation != "eager":
            raise ValueError("model.experts_implementation applies to arch: mixtral only")
        return self


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
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"data.sources: duplicate source names {names}")
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


class TrainSection(Section):
    max_steps: int = Field(1000, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    grad_accum_steps: int | None = Field(None, ge=1)
    global_batch_size: int | None = Field(None, ge=1)
    stop_at_step: int | None = Field(None, ge=1, description="checkpoint and stop early (time-limited jobs); "
                                     "a later launch resumes, schedule unchanged")
    precision: Literal["bf16", "fp32"] = "bf16"
    activation_checkpointing: bool = False
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


class PretrainConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _check(self):
        from patentgpt.config.checks import check_pretrain_static

        check_pretrain_static(self)  # run.name, model.rope_scaling, deepspeed.extra (harden: issue #16)
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(f"data.seq_len {self.data.seq_len} exceeds model.max_position_embeddings "
                             f"{self.model.max_position_embeddings}")
        if self.optim.warmup_steps >= self.train.max_steps and self.train.max_steps > 1:
            raise ValueError(f"optim.warmup_steps {self.optim.warmup_steps} must be < train.max_steps "
                             f"{self.train.max_steps}")
        return self


def resolve_batch(cfg: PretrainConfig, world_size: int) -> tuple[int, int, int]:
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
