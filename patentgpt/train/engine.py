"""DeepSpeed set-up shared by every stage: the engine config, ZeRO-3 construction, the engine."""

from __future__ import annotations

import contextlib

import torch

from patentgpt.config.base import _deep_merge
from patentgpt.train.config import TrainConfigBase

# Written into every checkpoint so DeepSpeed's ds_to_universal converter accepts it.
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}


def deepspeed_config(cfg: TrainConfigBase, micro: int, accum: int, global_batch: int) -> dict:
    zero = {"stage": cfg.deepspeed.zero_stage, "overlap_comm": cfg.deepspeed.overlap_comm,
            "contiguous_gradients": True}
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.train.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    sp = cfg.deepspeed.sequence_parallel_size
    if sp > 1:  # each rank runs sp micro-steps (one shard of each of its group's micro-batches) per micro-batch
        ds.update(sequence_parallel_size=sp, gradient_accumulation_steps=accum * sp)
    if cfg.train.autocast:  # fp32 weights, matmuls in bf16 (DeepSpeed's torch.autocast wrapper)
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return _deep_merge(ds, cfg.deepspeed.extra)


@contextlib.contextmanager
def model_construction(ds_config: dict):
    """Build models inside this: under ZeRO-3, transformers then creates them partitioned
    (``HfDeepSpeedConfig`` must be alive while ``from_pretrained`` / ``from_config`` run)."""
    keep_alive = None
    if ds_config["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841
    try:
        yield
    finally:
        del keep_alive


def moe_block_type(model):
    """The sparse MoE block class of a transformers MoE model, or None for a dense one."""
    if not getattr(model.config, "num_local_experts", 0):
        return None
    base = getattr(model, "model", model)
    return type(base.layers[0].mlp)


def make_engine(model, cfg: TrainConfigBase, ds_config: dict, mpu=None):
    """(engine, optimizer): the model wrapped by DeepSpeed with our skippable AdamW (``mpu``: the
    sequence-parallel groups, patentgpt/train/sequence_parallel.py)."""
    import deepspeed

    from patentgpt.train.optim import SkippableAdamW, param_groups

    block = moe_block_type(model)
    if block is not None and cfg.deepspeed.zero_stage == 3:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, [block])  # ranks routing to different experts must not hang
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    from patentgpt.model.expert_parallel import expert_parallel_param_groups

    groups = expert_parallel_param_groups(model, cfg, lambda m: param_groups(m, cfg.optim.weight_decay))
    optimizer = SkippableAdamW(groups, lr=cfg.optim.lr,
                               betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                               implementation=cfg.optim.implementation)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=mpu)
    skip_lone_allreduce(engine, cfg)
    foreach_clip(engine, cfg)
    if cfg.train.compile:
        engine.compile()  # in place: parameter names, checkpoints and export are unchanged
    return engine, optimizer


def skip_lone_allreduce(engine, cfg: TrainConfigBase) -> None:
    """One process under ZeRO-0: DeepSpeed's gradient "all-reduce" would flatten every gradient into
    a buffer, reduce it over a group of one and copy it back, each step, for nothing; turn it off."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1  # Ulysses ranks reduce over dp x sp
    if cfg.deepspeed.zero_stage == 0 and engine.dp_world_size == 1 and world == 1:
        engine.enable_backward_allreduce = False


def foreach_clip(engine, cfg: TrainConfigBase) -> None:
    """fp32 weights without ZeRO: DeepSpeed clips with a loop of one norm and one multiply per parameter
    and all-reduces the (already identical) norm over the data-parallel group every step; torch's
    multi-tensor ``clip_grad_norm_`` does the same arithmetic in a few kernels and keeps the pre-clip
    norm, which the trainer then logs instead of computing it again. Not with model/sequence-parallel
    groups or DeepSpeed MoE layers, whose norms DeepSpeed combines across groups."""
    if (cfg.deepspeed.zero_stage != 0 or cfg.train.grad_clip <= 0 or engine.bfloat16_enabled()
            or engine.fp16_enabled() or engine.mpu is not None or getattr(engine, "has_moe_layers", False)):
        return

    def clip():
        engine.clip_norm = torch.nn.utils.clip_grad_norm_(engine.module.parameters(), engine.gradient_clipping(),
                                                          foreach=True)

    engine.clip_norm = None
    engine.clip_fp32_gradients = clip


def step_grad_norm(engine):
    """The pre-clip gradient norm of the step just taken: the foreach clip's, else DeepSpeed's (ZeRO)."""
    norm = getattr(engine, "clip_norm", None)
    return norm if norm is not None else engine.get_global_grad_norm()


def grad_norm_before_step(engine, cfg: TrainConfigBase) -> float | None:
    """The norm that must be taken before ``engine.step()`` clears the gradients: ZeRO-0 without the
    foreach clip (DeepSpeed reports none there); None where ``step_grad_norm`` has it after the step."""
    if cfg.deepspeed.zero_stage != 0 or hasattr(engine, "clip_norm"):
        return None
    return stage0_grad_norm(engine)


def stage0_grad_norm(engine) -> float:
    """Global gradient norm before clipping; without ZeRO, DeepSpeed does not report it."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
