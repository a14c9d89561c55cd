"""Schema of a model (``model:`` in every training config): architecture, size, kernels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from patentgpt.config import Section
from patentgpt.model.rope import RopeScaling, check_rope


class RouterSection(Section):
    """Routing controls of a MoE model (``model.router``; see patentgpt/model/routing.py)."""

    z_loss_coef: float = Field(0.0, ge=0, description="router z-loss (ST-MoE): coef x mean logsumexp(logits)^2")
    jitter: float = Field(0.0, ge=0, lt=1, description="multiplicative U(1-j, 1+j) noise on the router's input, "
                                                       "training only")
    bias_update_rate: float = Field(0.0, ge=0, description="auxiliary-loss-free balancing (DeepSeek-V3): per-expert "
                                    "selection bias moved by rate x sign(mean load - load) each step; 0 = off")
    dead_expert_steps: int = Field(50, ge=0, description="warn when an expert gets no token for this many "
                                                         "consecutive steps; 0 = never")


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
    max_position_embeddings: int = Field(4096, ge=16, description="the context length the model is for")
    # RoPE (patentgpt/model/rope.py): ABF = a higher rope_theta; linear / dynamic / yarn in rope_scaling
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # Mixture of experts (arch: mixtral)
    num_experts: int = Field(8, ge=1)
    experts_per_token: int = Field(2, ge=1)
    router_aux_loss_coef: float = Field(0.01, ge=0)
    router: RouterSection = Field(default_factory=RouterSection)
    upcycle_from: str | None = Field(None, description="dense LLaMA directory: start from its upcycled MoE "
                                     "(experts copied from its FFN; as patentgpt model upcycle, in memory)")
    # Kernels
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    experts_implementation: Literal["eager", "grouped_mm", "batched_mm", "megablocks"] = "eager"

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
        if self.arch == "llama" and self.router != RouterSection():
            raise ValueError("model.router applies to arch: mixtral only")
        if self.upcycle_from and (self.arch != "mixtral" or self.init_from):
            raise ValueError("model.upcycle_from needs arch: mixtral and no model.init_from")
        check_rope(self)
        return self
