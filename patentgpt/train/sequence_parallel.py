"""Ulysses sequence parallelism (``deepspeed.sequence_parallel_size``) through DeepSpeed's own
Arctic Long Sequence Training components for HF models:

* ``UlyssesSPAttentionHF.register_with_transformers`` wraps the model's attention kernel (sdpa /
  flash-attn): each rank holds ``seq_len / sp`` tokens of a sequence, an all-to-all gives every
  rank the full sequence for ``num_heads / sp`` heads, attention runs, a second all-to-all brings
  the shards back. It returns the ``mpu`` (sequence- and data-parallel groups) for
  ``deepspeed.initialize``.
* ``UlyssesSPDataLoaderAdapter`` turns each rank's micro-batch into ``sp`` shards: the ranks of a
  sequence-parallel group exchange their micro-batches, and each rank then processes its shard of
  every one of them (so a rank runs ``sp`` micro-steps per loaded micro-batch; DeepSpeed's gradient
  accumulation counts them). Labels become ``shift_labels`` (shifted before sharding).
* The loss of a micro-batch is the sum of its shards' token losses (a differentiable all-gather
  over the group), divided by the step's target count like every other micro-step (and by sp,
  see ``micro_step``).

Runs on CPU over gloo (tests/test_sequence_parallel.py: 2 ranks against 1). Ulysses discards the
4D attention mask: document masking under sequence parallelism needs flash_attention_2 (varlen from
position_ids); sdpa would silently attend across documents, so that combination is refused.
"""

from __future__ import annotations

from patentgpt.config import ConfigError


def check_sequence_parallel(cfg, world: int | None = None) -> None:
    """Refuse settings Ulysses cannot run, naming the key (static part from the config validator,
    ``world`` once the process group exists)."""
    sp = cfg.deepspeed.sequence_parallel_size
    if sp == 1:
        return
    key = "deepspeed.sequence_parallel_size"
    m = cfg.model
    kv = m.num_kv_heads or m.num_heads
    if m.attn_implementation == "eager":
        raise ConfigError(f"{key}: {sp} needs model.attn_implementation sdpa or flash_attention_2 (Ulysses "
                          f"cannot use eager attention's 4D mask)")
    if not m.init_from and m.num_heads % sp:
        raise ConfigError(f"{key}: {sp} must divide model.num_heads {m.num_heads} (each rank attends with "
                          f"num_heads / {sp} heads)")
    if not m.init_from and kv % sp and sp % kv:
        raise ConfigError(f"{key}: {sp} and model.num_kv_heads {kv} must divide one another")
    seq_len = getattr(getattr(cfg, "data", None), "seq_len", None)
    if seq_len is not None and seq_len % sp:
        raise ConfigError(f"{key}: {sp} must divide data.seq_len {seq_len}")
    if getattr(cfg.data, "document_masking", False) and m.attn_implementation != "flash_attention_2":
        raise ConfigError(f"{key}: {sp} with data.document_masking needs model.attn_implementation "
                          f"flash_attention_2 (Ulysses drops the block-diagonal mask sdpa would use)")
    if not getattr(cfg.data, "seq_len", None):
        raise ConfigError(f"{key}: sequence parallelism is for pretraining on packed rows")
    if world is not None and world % sp:
        raise ConfigError(f"{key}: {sp} must divide the number of ranks {world}")


class SequenceParallel:  # torch and deepspeed imported inside: the config check above runs without them
    """One run's Ulysses set-up: register the attention wrapper, shard micro-batches, the loss."""

    def __init__(self, size: int):
        self.size = size
        self.mpu = None

    def register(self, model, cfg, micro: int):
        """Wrap the attention kernel; returns the ``mpu`` for ``deepspeed.initialize``."""
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        self.mpu = UlyssesSPAttentionHF.register_with_transformers(
            model_name_or_path=model, core_attn_implementation=cfg.model.attn_implementation,
            sequence_parallel_size=self.size, micro_batch_size=micro, seq_length=cfg.data.seq_len,
            seq_length_is_variable=False,
            disable_in_eval=True)  # held-out eval, the export check and benchmarks see whole rows
        if self.mpu.get_sequence_data_parallel_rank() == 0:
            print(f"Ulysses sequence parallelism: {self.size} ranks per sequence "
                  f"({cfg.data.seq_len // self.size} tokens each), data-parallel "
                  f"{self.mpu.get_sequence_data_parallel_world_size() // self.size}", flush=True)
        return self.mpu

    def shard(self, batches: list[dict]) -> list[dict]:
        """This rank's shards of the group's micro-batches (``sp`` per loaded micro-batch)."""
        import torch
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

        full = []
        for b in batches:
            b = dict(b)
            if "position_ids" not in b:  # plain packing: one position run per row
                b["position_ids"] = torch.arange(b["input_ids"].shape[1]).expand_as(b["input_ids"]).contiguous()
            full.append(b)
        mpu = self.mpu
        adapter = UlyssesSPDataLoaderAdapter(full, sp_rank=mpu.get_sequence_parallel_rank(),
                                             sp_group=mpu.get_sequence_parallel_group(),
                                             sp_world_size=mpu.get_sequence_parallel_world_size(),
                                             device=torch.device("cpu"))
        return list(adapter)

    def micro_step(self, engine, batch: dict, items_per_micro: float):
        """(loss to backpropagate, stats) of one shard: the group's summed token losses / items."""
        import torch
        import torch.distributed.nn
        import torch.nn.functional as F

        from patentgpt.data.loader import IGNORE

        shift = batch["shift_labels"]
        inputs = {k: v.to(engine.device) for k, v in batch.items() if k != "shift_labels"}
        out = engine(**inputs, use_cache=False)
        logits = out.logits.float()
        local = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shift.to(logits.device).reshape(-1),
                                ignore_index=IGNORE, reduction="sum")
        group_sum = torch.stack(torch.distributed.nn.functional.all_gather(
            local, group=self.mpu.get_sequence_parallel_group())).sum()
        # Every rank of the group backpropagates the group's sum (the all-gather's backward adds the
        # group's gradients), and DeepSpeed averages over world / sp data-parallel replicas: the
        # parameters would get sp x one process's gradient. Dividing by sp makes them equal (the
        # test compares gradient norms, not only losses, which Adam would hide).
        loss = group_sum / (items_per_micro * self.size)
        stats = {"loss_sum": float(local.detach())}
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            coef = engine.module.config.router_aux_loss_coef
            loss = loss + coef * aux / self.size
            stats["aux_sum"] = float(aux.detach()) / self.size
        return loss, stats


def sequence_parallel(cfg, stage, world: int) -> SequenceParallel | None:
    """The run's sequence parallelism, or None (``deepspeed.sequence_parallel_size: 1``)."""
    size = cfg.deepspeed.sequence_parallel_size
    if size == 1:
        return None
    if stage.name != "pretrain":
        raise ConfigError(f"deepspeed.sequence_parallel_size: {size} is for pretraining (this is {stage.name})")
    check_sequence_parallel(cfg, world)
    return SequenceParallel(size)
