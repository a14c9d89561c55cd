"""Continued pretraining on DeepSpeed: one loop for dense and MoE backbones, CPU and GPU."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from patentgpt.config import save_config
from patentgpt.data.loader import MixtureLoader
from patentgpt.data.shards import ShardError, ShardSet, TokenizerInfo
from patentgpt.model.vocab import MAX_EXTRA_ROWS, check_vocab
from patentgpt.train.config import PretrainConfig, resolve_batch


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite or spiking losses."""


@dataclass
class LossGuard:
    """Flags non-finite losses and spikes against a running mean of accepted losses."""

    spike_factor: float
    warmup_steps: int
    max_consecutive: int
    ema: float | None = None
    accepted: int = 0
    consecutive_bad: int = 0
    skipped_total: int = 0
    reasons: dict = field(default_factory=dict)

    def check(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non_finite"
        if self.ema is not None and self.accepted >= self.warmup_steps and loss > self.spike_factor * self.ema:
            return "spike"
        return None

    def record(self, loss: float, reason: str | None, step: int) -> None:
        if reason is None:
            self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
            self.accepted += 1
            self.consecutive_bad = 0
            return
        self.skipped_total += 1
        self.consecutive_bad += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.consecutive_bad >= self.max_consecutive:
            raise TrainingDiverged(
                f"step {step}: {self.consecutive_bad} consecutive bad steps (last: {reason}, loss {loss}); "
                f"stopping. Lower optim.lr, check the data, or resume from an earlier checkpoint.")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("ema", "accepted", "consecutive_bad", "skipped_total", "reasons")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def deepspeed_config(cfg: PretrainConfig, micro: int, accum: int, global_batch: int) -> dict:
    from patentgpt.config.base import _deep_merge

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
    return _deep_merge(ds, cfg.deepspeed.extra)


def open_sources(cfg: PretrainConfig, tok_info: TokenizerInfo, model_vocab: int) -> list[tuple[str, ShardSet, float]]:
    sources = []
    for spec in cfg.data.sources:
        shards = ShardSet(spec.path)
        shards.check_tokenizer(tok_info, model_vocab)
        sources.append((spec.name, shards, spec.weight))
    return sources


def expert_fractions(router_logits, top_k: int, num_experts: int) -> np.ndarray:
    """[layers, experts] share of routed (token, slot) pairs each expert received."""
    rows = []
    for logits in router_logits:
        idx = torch.topk(logits.detach().float(), top_k, dim=-1).indices.reshape(-1)
        counts = torch.bincount(idx, minlength=num_experts).double()
        rows.append((counts / counts.sum()).cpu().numpy())
    return np.stack(rows)


def stage0_grad_norm(engine) -> float:
    """Global gradient norm before clipping; without ZeRO, DeepSpeed does not report it."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


@torch.no_grad()
def training_logits(module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the training module in eval mode. Under ZeRO-3 every rank must call this
    (the forward gathers partitioned parameters collectively)."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    with torch.no_grad():
        logits = module(input_ids=input_ids.to(device)).logits.float().cpu()
    module.train(was_training)
    return logits


@torch.no_grad()
def export_logit_diff(logits: torch.Tensor, export_dir: Path, input_ids: torch.Tensor) -> float:
    """Largest absolute difference between the training model's logits and its export's."""
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    return float((logits - exported(input_ids=input_ids).logits.float()).abs().max())


def forward_backward(engine, batch: dict, moe: bool):
    """One micro-batch: forward, backward; returns (loss, aux loss or None, router logits or None)."""
    out = engine(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False)
    engine.backward(out.loss)
    if moe:
        return out.loss.detach(), out.aux_loss.detach(), out.router_logits
    return out.loss.detach(), None, None


def run_pretraining(cfg: PretrainConfig) -> dict:
    """Train as the config says; returns a summary (rank 0's view)."""
    import deepspeed
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from patentgpt.model.build import DTYPES, build_model, hf_config, is_moe, round_up
    from patentgpt.model.flops import device_peak_flops, flops_per_token
    from patentgpt.train.checkpoint import clean_incomplete, latest_checkpoint, load_checkpoint, save_checkpoint
    from patentgpt.train.dist import all_reduce_sum, barrier, init_distributed
    from patentgpt.train.export import export_checkpoint
    from patentgpt.train.monitor import Monitor
    from patentgpt.train.optim import SkippableAdamW, param_groups
    from patentgpt.train.plots import plot_expert_load, plot_loss
    from patentgpt.train.schedule import lr_at

    rank, world, _ = init_distributed()
    micro, accum, global_batch = resolve_batch(cfg, world)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    ckpt_root = run_dir / "checkpoints"

    # Cheap checks first: tokenizer, shards, vocab agreement.
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    tok_info = TokenizerInfo.from_tokenizer(tokenizer, name=Path(cfg.data.tokenizer).name)
    vocab = cfg.model.vocab_size or round_up(len(tokenizer))
    check_vocab(vocab, tokenizer, where="model.vocab_size", max_extra_rows=None)
    sources = open_sources(cfg, tok_info, None)
    if tok_info.eos_id is None:
        raise ShardError(f"tokenizer {cfg.data.tokenizer} has no EOS token; packing needs one")

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_incomplete(ckpt_root)
        plain_config = save_config(cfg, run_dir / "config.yaml")
    else:
        plain_config = {}
    barrier()

    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed % 2**32)
    dtype = DTYPES[cfg.train.precision]
    ds_config = deepspeed_config(cfg, micro, accum, global_batch)
    keep_alive = None
    if cfg.deepspeed.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841 - makes transformers build under zero.Init
    model = build_model(cfg.model, vocab, dtype=dtype, tokenizer=tokenizer)
    check_vocab(model.config.vocab_size, tokenizer, where=f"model {cfg.model.init_from or cfg.model.arch}",
                max_extra_rows=MAX_EXTRA_ROWS if cfg.model.init_from else None)
    for _, shards, _ in sources:
        shards.check_tokenizer(tok_info, model.config.vocab_size)
    moe = is_moe(model)
    if moe and cfg.deepspeed.zero_stage == 3:
        from deepspeed.utils import set_z3_leaf_modules

        block = type(model.model.layers[0].mlp)
        set_z3_leaf_modules(model, [block])  # ranks routing to different experts must not hang
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False

    optimizer = SkippableAdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                               betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    del keep_alive

    loader = MixtureLoader(sources, seq_len=cfg.data.seq_len, micro_batch_size=micro, grad_accum_steps=accum,
                           world_size=world, rank=rank, seed=cfg.run.seed, eos_id=tok_info.eos_id,
                           bos_id=tok_info.bos_id if cfg.data.add_bos else None)
    guard = LossGuard(cfg.train.spike_factor, cfg.train.spike_warmup_steps, cfg.train.max_consecutive_bad_steps)
    start_step, tokens_seen = 0, 0
    resume_from = latest_checkpoint(ckpt_root) if cfg.checkpoint.resume == "auto" else None
    if resume_from is not None:
        state = load_checkpoint(engine, resume_from, rank=rank)
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        loader.load_state_dict(state["loader"])
        guard.load_state_dict(state["loss_guard"])
        if rank == 0:
            print(f"resumed from {resume_from} at step {start_step}")

    monitor = Monitor(run_dir, plain_config, cfg.logging.wandb, run_name=cfg.run.name, enabled=rank == 0,
                      resume_step=start_step)
    peak, peak_source = ((cfg.logging.peak_tflops * 1e12, "config") if cfg.logging.peak_tflops
                         else device_peak_flops(dtype))
    flops_tok = flops_per_token(model.config, cfg.data.seq_len)
    tokens_per_step = global_batch * cfg.data.seq_len

    def extra_files() -> dict:
        return {
            "config.yaml": lambda p: save_config(cfg, p),
            "hf_config": lambda p: model.config.save_pretrained(p),
            "tokenizer": lambda p: tokenizer.save_pretrained(p),
        }

    def save(step: int) -> Path:
        trainer_state = {"step": step, "tokens_seen": tokens_seen, "loader": loader.state_dict(),
                         "loss_guard": guard.state_dict(), "world_size": world, "global_batch_size": global_batch}
        return save_checkpoint(engine, ckpt_root, step, trainer_state, rank=rank,
                               keep_last=cfg.checkpoint.keep_last, extra_files=extra_files())

    bar = tqdm(total=cfg.train.max_steps, initial=start_step, desc=cfg.run.name, disable=rank != 0,
               unit="step", dynamic_ncols=True)
    last_ckpt: Path | None = resume_from
    losses: list[tuple[int, float]] = []
    fractions_sum, fractions_n = None, 0
    engine.train()
    for step in range(start_step, cfg.train.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg.train.max_steps, cfg.optim)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        batches = loader.next_step()
        loss_sum, aux_sum, fractions = 0.0, 0.0, None
        for i, batch in enumerate(batches):
            loss, aux, router_logits = forward_backward(engine, batch, moe)
            loss_sum += loss.item()
            if moe:
                aux_sum += aux.item()
                f = expert_fractions(router_logits, model.config.num_experts_per_tok, model.config.num_local_experts)
                fractions = f if fractions is None else fractions + f
            if i < len(batches) - 1:
                engine.step()
        totals = all_reduce_sum([loss_sum, aux_sum])
        step_loss = totals[0] / (accum * world)
        reason = guard.check(step_loss)
        optimizer.skip_next = reason is not None
        full_grad_norm = stage0_grad_norm(engine) if cfg.deepspeed.zero_stage == 0 else None
        engine.step()  # the accumulation boundary: update (or skip) and clear gradients
        guard.record(step_loss, reason, step + 1)
        tokens_seen += tokens_per_step
        dt = time.perf_counter() - t0
        losses.append((step + 1, step_loss))
        if fractions is not None:
            fractions = fractions / accum
            fractions_sum = fractions if fractions_sum is None else fractions_sum + fractions
            fractions_n += 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        done = step + 1
        if done % cfg.logging.every_steps == 0 or done == cfg.train.max_steps or reason:
            grad_norm = full_grad_norm if full_grad_norm is not None else engine.get_global_grad_norm()
            record = {
                "step": done,
                "loss": step_loss,
                "lr": lr,
                "grad_norm": None if grad_norm is None or reason else float(grad_norm),
                "tokens_per_sec": tokens_per_step / dt,
                "mfu": tokens_per_step * flops_tok / dt / (peak * world),
                "tokens_seen": tokens_seen,
                "step_time_s": dt,
                "skipped_steps": guard.skipped_total,
            }
            if reason:
                record["skip_reason"] = reason
            if torch.cuda.is_available():
                record["memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            else:
                import resource

                record["memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            if moe:
                coef = model.config.router_aux_loss_coef
                record["aux_loss"] = totals[1] / (accum * world)
                record["lm_loss"] = step_loss - coef * record["aux_loss"]
                for layer, row in enumerate(fractions):
                    for e, v in enumerate(row):
                        record[f"expert_load/layer{layer}/e{e}"] = float(v)
            monitor.log(record)
        if done == cfg.train.stop_at_step:
            break
        if done % cfg.checkpoint.every_steps == 0 and done != cfg.train.max_steps:
            last_ckpt = save(done)
    bar.close()

    final_step = min(cfg.train.max_steps, cfg.train.stop_at_step or cfg.train.max_steps)
    finished = final_step == cfg.train.max_steps
    if last_ckpt is None or not last_ckpt.name.endswith(f"{final_step:08d}"):
        last_ckpt = save(final_step)
    summary = {"run_dir": str(run_dir), "final_checkpoint": str(last_ckpt), "steps": final_step,
               "finished": finished, "skipped_steps": guard.skipped_total, "losses": losses,
               "world_size": world, "peak_flops_source": peak_source}
    if rank == 0 and finished:
        from patentgpt.train.monitor import read_metrics

        pngs = [plot_loss(read_metrics(run_dir), run_dir / "loss.png")]
        if fractions_n:
            pngs.append(plot_expert_load(fractions_sum / fractions_n, run_dir / "expert_load.png"))
        monitor.log_files([p for p in pngs if p])
    if finished and cfg.checkpoint.export_at_end:
        export_dir = run_dir / "export"
        if rank == 0:
            export_checkpoint(last_ckpt, export_dir)
            summary["export_dir"] = str(export_dir)
        barrier()
        # Verify the export against the training model (all ranks run the forward: ZeRO-3).
        probe = loader.next_step()[0]["input_ids"][:1]
        logits = training_logits(engine.module, probe)
        if rank == 0:
            summary["export_max_logit_diff"] = export_logit_diff(logits, export_dir, probe)
            print(f"exported {export_dir}; max |logit diff| vs training model: "
                  f"{summary['export_max_logit_diff']:.2e}")
    barrier()
    monitor.finish()
    return summary
