"""Dense -> MoE upcycling: a LLaMA checkpoint becomes a ``MixtralForCausalLM`` whose experts start
as copies of the dense FFN (sparse upcycling, Komatsuzaki et al. 2022).

Attention, norms, embeddings and LM head are copied unchanged; every expert's ``gate_up_proj``
is ``[gate_proj; up_proj]`` and its ``down_proj`` the dense ``down_proj``. The router starts small
(normal, ``router_std``): whatever it selects, the top-k gate weights are renormalised to sum to
1, so a weighted sum of identical experts is the dense FFN and, without noise or re-initialisation,
the MoE model's logits equal the dense model's (checked on every upcycle, reported as
``max_logit_diff``). A random (not zero) router matters: with all-zero logits every token ties
and goes to the first k experts, and identical experts give the router no gradient to break it.

Options: ``noise`` adds Gaussian noise of ``noise`` x (the weight's std) to every expert copy;
``reinit_fraction`` re-initialises that fraction of each expert's intermediate neurons (rows of
gate/up, columns of down) from a normal with the dense weight's mean and std (Drop-Upcycling,
Nakamura et al. 2025), a different random subset per expert. Both break the experts' symmetry and
the exact equality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from patentgpt.config import ConfigError
from patentgpt.io import publish_dir

COPIED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
          "rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
          "rope_parameters", "attention_dropout")


def mixtral_config_from(dense_config, num_experts: int, top_k: int, router_aux_loss_coef: float = 0.01):
    """The MixtralConfig of the upcycled model; refuses dense features Mixtral cannot hold."""
    from transformers import MixtralConfig

    if dense_config.model_type != "llama":
        raise ConfigError(f"--model: upcycling needs a LLaMA checkpoint (model_type llama), got "
                          f"{dense_config.model_type!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(dense_config, flag, False):
            raise ConfigError(f"--model: {flag}=true has no Mixtral equivalent; cannot upcycle exactly")
    if not 1 <= top_k <= num_experts:
        raise ConfigError(f"--top-k {top_k} must be between 1 and --experts {num_experts}")
    kwargs = {k: getattr(dense_config, k) for k in COPIED if getattr(dense_config, k, None) is not None}
    return MixtralConfig(**kwargs, num_local_experts=num_experts, num_experts_per_tok=top_k,
                         router_aux_loss_coef=router_aux_loss_coef, sliding_window=None)


@torch.no_grad()
def upcycle_model(dense, num_experts: int, top_k: int, *, noise: float = 0.0, reinit_fraction: float = 0.0,
                  router_std: float = 1e-3, seed: int = 0, experts_implementation: str = "eager"):
    """A ``MixtralForCausalLM`` (fp32) built from the dense ``LlamaForCausalLM`` ``dense``."""
    from transformers import MixtralForCausalLM

    if noise < 0 or not 0 <= reinit_fraction <= 1 or router_std < 0:
        raise ConfigError("upcycle: noise and router_std must be >= 0, reinit_fraction in [0, 1]")
    config = mixtral_config_from(dense.config, num_experts, top_k)
    gen = torch.Generator().manual_seed(seed)
    moe = MixtralForCausalLM._from_config(config, dtype=torch.float32, experts_implementation=experts_implementation)
    src = {k: v.float() for k, v in dense.state_dict().items()}
    state = {}
    for name, tensor in moe.state_dict().items():
        if ".mlp." not in name:
            state[name] = src[name].clone()
    inter = config.intermediate_size
    for i in range(config.num_hidden_layers):
        pre = f"model.layers.{i}.mlp"
        gate, up, down = (src[f"{pre}.{p}_proj.weight"] for p in ("gate", "up", "down"))
        gate_up = torch.cat([gate, up], dim=0)  # [2I, H]: transformers' [gate; up] layout
        experts_gu = gate_up.unsqueeze(0).repeat(num_experts, 1, 1)
        experts_down = down.unsqueeze(0).repeat(num_experts, 1, 1)
        if reinit_fraction > 0:
            n = int(round(reinit_fraction * inter))
            for e in range(num_experts):
                idx = torch.randperm(inter, generator=gen)[:n]
                rows = torch.cat([idx, idx + inter])
                experts_gu[e, rows] = _like(gate_up, (len(rows), gate_up.shape[1]), gen)
                experts_down[e][:, idx] = _like(down, (down.shape[0], n), gen)
        if noise > 0:
            experts_gu += torch.randn(experts_gu.shape, generator=gen) * noise * gate_up.std()
            experts_down += torch.randn(experts_down.shape, generator=gen) * noise * down.std()
        state[f"{pre}.experts.gate_up_proj"] = experts_gu
        state[f"{pre}.experts.down_proj"] = experts_down
        state[f"{pre}.gate.weight"] = torch.randn(num_experts, config.hidden_size, generator=gen) * router_std
    missing, unexpected = moe.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"upcycle: state mismatch, missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    if tied:
        moe.tie_weights()
    moe.config.architectures = ["MixtralForCausalLM"]
    return moe.eval()


def upcycle_dir(cfg, dtype=torch.float32):
    """``model.upcycle_from``: the upcycled MoE of a dense directory, built in memory for training
    (``cfg``: a ModelSection; experts, top-k, aux-loss coefficient and experts kernel from it)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ConfigError("model.upcycle_from: not under ZeRO-3 (parameters are partitioned at construction); run "
                          "patentgpt model upcycle and set model.init_from to its output")
    if not (Path(cfg.upcycle_from) / "config.json").is_file():
        raise ConfigError(f"model.upcycle_from {cfg.upcycle_from}: not a transformers model directory")
    dense = AutoModelForCausalLM.from_pretrained(cfg.upcycle_from, dtype=torch.float32)
    moe = upcycle_model(dense, cfg.num_experts, cfg.experts_per_token,
                        experts_implementation=cfg.experts_implementation)
    moe.config.output_router_logits = True
    moe.config.router_aux_loss_coef = cfg.router_aux_loss_coef
    return moe.train().to(dtype)


def _like(weight: torch.Tensor, shape, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * weight.std() + weight.mean()


@torch.no_grad()
def max_logit_diff(dense, moe, vocab_size: int, seq: int = 32, seed: int = 0) -> float:
    """Largest |logit difference| of the two models on random token ids (2 x ``seq``)."""
    ids = torch.randint(0, vocab_size, (2, seq), generator=torch.Generator().manual_seed(seed))
    a = dense.eval()(ids, use_cache=False).logits.float()
    b = moe.eval()(ids, use_cache=False).logits.float()
    return float((a - b).abs().max())


def upcycle(model_dir: str | Path, out: str | Path, num_experts: int, top_k: int, *, noise: float = 0.0,
            reinit_fraction: float = 0.0, router_std: float = 1e-3, seed: int = 0) -> dict:
    """``patentgpt model upcycle``: write the upcycled model (and the dense tokenizer) to ``out``, atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"--model {model_dir}: not a transformers model directory (no config.json)")
    mixtral_config_from(AutoConfig.from_pretrained(model_dir), num_experts, top_k)  # refuse early, before weights
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    moe = upcycle_model(dense, num_experts, top_k, noise=noise, reinit_fraction=reinit_fraction,
                        router_std=router_std, seed=seed)
    diff = max_logit_diff(dense, moe, dense.config.vocab_size)
    exact = noise == 0 and reinit_fraction == 0
    if exact and diff > 1e-4:
        raise RuntimeError(f"upcycled model differs from the dense one by {diff:.2e} (expected < 1e-5)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    moe.save_pretrained(tmp)
    try:
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
        tokenizer = True
    except (OSError, ValueError):
        tokenizer = False
    publish_dir(tmp, out)
    dense_params = sum(p.numel() for p in dense.parameters())
    total = sum(p.numel() for p in moe.parameters())
    return {"out": str(out), "experts": num_experts, "top_k": top_k, "noise": noise,
            "reinit_fraction": reinit_fraction, "router_std": router_std, "dense_params": dense_params,
            "moe_params": total, "max_logit_diff": diff, "exact_copy": exact, "tokenizer_copied": tokenizer}
