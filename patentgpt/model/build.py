"""Build transformers' own LLaMA / Mixtral models from a config, or load a pretrained one."""

from __future__ import annotations

import torch

from patentgpt.model.kernels import prepare_kernels
from patentgpt.model.config import ModelSection
from patentgpt.model.rope import apply_rope, hf_max_position_embeddings, rope_parameters

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def round_up(n: int, multiple: int = 64) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def hf_config(cfg: ModelSection, vocab_size: int, tokenizer=None):
    """A ``LlamaConfig`` or ``MixtralConfig`` for ``cfg`` (RoPE settings in ``rope_parameters``)."""
    from transformers import LlamaConfig, MixtralConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=hf_max_position_embeddings(cfg),
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        rope_parameters=rope_parameters(cfg),
    )
    if tokenizer is not None:
        common.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    if cfg.arch == "llama":
        return LlamaConfig(**common)
    return MixtralConfig(
        **common,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.experts_per_token,
        router_aux_loss_coef=cfg.router_aux_loss_coef,
        output_router_logits=True,
    )


def _kernel_kwargs(cfg: ModelSection) -> dict:
    kwargs = {"attn_implementation": cfg.attn_implementation}
    if cfg.arch == "mixtral":
        kwargs["experts_implementation"] = cfg.experts_implementation
    return kwargs


def build_model(cfg: ModelSection, vocab_size: int, dtype: torch.dtype = torch.float32, tokenizer=None):
    """A fresh model from ``cfg`` or, with ``cfg.init_from``, the pretrained one it names."""
    from transformers import AutoModelForCausalLM

    prepare_kernels(cfg.attn_implementation, cfg.experts_implementation if cfg.arch == "mixtral" else None)
    if cfg.init_from:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(cfg.init_from, trust_remote_code=cfg.trust_remote_code)
        apply_rope(config, cfg)  # stage 2: the run's RoPE settings replace the export's
        model = AutoModelForCausalLM.from_pretrained(
            cfg.init_from, config=config, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **_kernel_kwargs(cfg))
        if getattr(model.config, "num_local_experts", None):
            model.config.output_router_logits = True
            model.config.router_aux_loss_coef = cfg.router_aux_loss_coef
        return model
    if cfg.upcycle_from:
        from patentgpt.model.upcycle import upcycle_dir

        return upcycle_dir(cfg, dtype)
    config = hf_config(cfg, vocab_size, tokenizer)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, **_kernel_kwargs(cfg))


def is_moe(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "num_local_experts", 0))
