"""The training core: one step loop for every stage, on DeepSpeed.

``Trainer(cfg, stage).fit()`` initialises the process group and the DeepSpeed engine, resumes
from the newest complete checkpoint, runs the steps (learning-rate schedule, gradient
accumulation, loss guard, ``stop_at_step``), evaluates the held-out split, logs to
``metrics.jsonl`` and W&B, saves atomic checkpoints, and at the end exports a transformers
directory and checks it against the training model. What differs per stage comes from the
:class:`~patentgpt.train.stage.Stage` it is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from patentgpt.config import ConfigError, save_config
from patentgpt.train.config import TrainConfigBase, resolve_batch
from patentgpt.train.stage import RunContext, Stage


@dataclass
class Progress:
    """Counters saved in every checkpoint."""

    tokens_seen: int = 0

    def state_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict) -> None:
        self.tokens_seen = int(state["tokens_seen"])


def memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@torch.no_grad()
def module_outputs(module, inputs: dict) -> torch.Tensor:
    """Outputs (``.logits``) of the training module in eval mode. Under ZeRO-3 every rank must
    call this (the forward gathers partitioned parameters collectively)."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out = module(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).logits.float().cpu()
    module.train(was_training)
    return out


@torch.no_grad()
def export_output_diff(outputs: torch.Tensor, export_dir: Path, inputs: dict) -> float:
    """Largest absolute difference between the training model's outputs and its export's."""
    from patentgpt.train.export import load_exported

    exported = load_exported(export_dir).eval()
    return float((outputs - exported(**inputs, use_cache=False).logits.float()).abs().max())


class Trainer:
    def __init__(self, cfg: TrainConfigBase, stage: Stage):
        self.cfg = cfg
        self.stage = stage

    def _eval_due(self, done: int) -> bool:
        e = self.cfg.eval
        if e.holdout <= 0:
            return False
        return done == self.cfg.train.max_steps or bool(e.every_steps and done % e.every_steps == 0)

    def fit(self) -> dict:
        """Train as the config says; returns a summary (rank 0's view)."""
        from tqdm.auto import tqdm

        from patentgpt.model.build import DTYPES
        from patentgpt.model.flops import run_peak
        from patentgpt.train.checkpoint import (clean_incomplete, latest_checkpoint, load_checkpoint, needs_universal,
                                                save_checkpoint)
        from patentgpt.train.dist import all_reduce_sum, barrier, init_distributed
        from patentgpt.train.engine import (deepspeed_config, grad_norm_before_step, make_engine, model_construction,
                                            step_grad_norm)
        from patentgpt.train.export import export_checkpoint
        from patentgpt.train.guard import LossGuard
        from patentgpt.train.monitor import Monitor, read_metrics
        from patentgpt.train.plots import plot_loss
        from patentgpt.train.schedule import lr_at
        from patentgpt.train.sequence_parallel import sequence_parallel

        cfg, stage = self.cfg, self.stage
        rank, world, _ = init_distributed()
        micro, accum, global_batch = resolve_batch(cfg, world)
        run_dir = Path(cfg.run.output_dir) / cfg.run.name
        ckpt_root = run_dir / "checkpoints"
        ctx = RunContext(cfg=cfg, rank=rank, world=world, micro=micro, accum=accum, global_batch=global_batch,
                         run_dir=run_dir, dtype=DTYPES[cfg.train.precision])

        if cfg.eval.suite.tasks and not stage.causal_lm:
            raise ConfigError(f"eval.suite.tasks: the {stage.name} stage trains no causal LM to run benchmarks on")
        stage.setup(ctx)  # cheap checks (tokenizer, data, vocab) before any heavy start-up
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            clean_incomplete(ckpt_root)
            plain_config = save_config(cfg, run_dir / "config.yaml")
        else:
            plain_config = {}
        barrier()

        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        ds_config = deepspeed_config(cfg, micro, accum, global_batch)
        resume_from = latest_checkpoint(ckpt_root) if cfg.checkpoint.resume == "auto" else None
        universal = resume_from is not None and needs_universal(resume_from, world, cfg.deepspeed.zero_stage)
        if universal:  # saved on another number of ranks: DeepSpeed loads it as a universal checkpoint
            ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
        with model_construction(ds_config):
            model = stage.build_model(ctx)
        model.config.architectures = [type(model).__name__]  # what export and the Auto classes load
        ctx.model = model
        sp = sequence_parallel(cfg, stage, world)  # Ulysses (deepspeed.sequence_parallel_size), else None
        engine, optimizer = make_engine(model, cfg, ds_config, mpu=sp.register(model, cfg, micro) if sp else None)
        ctx.extras["engine"] = engine
        loader = stage.make_loader(ctx)
        guard = LossGuard(cfg.train.spike_factor, cfg.train.spike_warmup_steps, cfg.train.max_consecutive_bad_steps)
        progress = Progress()
        states = {"progress": progress, "loader": loader, "loss_guard": guard, **stage.states()}
        meta = {"stage": stage.name, "world_size": world, "global_batch_size": global_batch}

        start_step = 0
        if resume_from is not None:
            start_step = load_checkpoint(engine, resume_from, states, rank=rank, extra_engines=stage.extra_engines(),
                                         universal=universal)["step"]
            if rank == 0:
                print(f"resumed from {resume_from} at step {start_step}" +
                      (" (saved on another number of ranks: universal checkpoint)" if universal else ""))

        monitor = Monitor(run_dir, plain_config, cfg.logging.wandb, run_name=cfg.run.name, enabled=rank == 0,
                          resume_step=start_step)
        device_peak = run_peak(cfg.logging.peak_tflops, ctx.dtype)  # once per run
        peak, peak_source = device_peak.flops, device_peak.source
        peak_record = device_peak.record()  # logged with this run's first step record
        flops_tok = stage.flops_per_token(ctx)
        tokens_per_step = stage.tokens_per_step(ctx)

        def extra_files() -> dict:
            files = {"config.yaml": lambda p: save_config(cfg, p),
                     "hf_config": lambda p: model.config.save_pretrained(p)}
            if ctx.tokenizer is not None:
                files["tokenizer"] = lambda p: ctx.tokenizer.save_pretrained(p)
            return files

        def save(step: int) -> Path:
            return save_checkpoint(engine, ckpt_root, step, states, rank=rank, keep_last=cfg.checkpoint.keep_last,
                                   extra_files={**extra_files(), **stage.extra_files()}, meta=meta,
                                   extra_engines=stage.extra_engines())

        def evaluate(step: int) -> dict:
            metrics = stage.evaluate(engine, ctx)
            if metrics:
                monitor.log({"step": step, **metrics})
            return metrics

        def evaluate_suite(step: int) -> None:
            """The IP benchmark tasks of ``eval.suite`` on the training model (rank 0; every rank
            under ZeRO-3, whose forwards are collective)."""
            from patentgpt.eval.harness import run_eval_suite

            if rank == 0 or cfg.deepspeed.zero_stage == 3:
                suite = cfg.eval.suite
                scores = run_eval_suite(engine.module, ctx.tokenizer, suite.tasks, limit=suite.limit)
                monitor.log({"step": step, **{f"bench/{k}": v for k, v in scores.items()}})
            barrier()

        evals: list[tuple[int, dict]] = []
        if start_step == 0 and cfg.eval.holdout > 0 and cfg.eval.at_start:
            evals.append((0, evaluate(0)))

        bar = tqdm(total=cfg.train.max_steps, initial=start_step, desc=f"{stage.name}:{cfg.run.name}",
                   disable=rank != 0, unit="step", dynamic_ncols=True)
        last_ckpt: Path | None = resume_from
        losses: list[tuple[int, float]] = []
        interval_tokens, interval_time = 0, 0.0
        engine.train()
        for step in range(start_step, cfg.train.max_steps):
            t0 = time.perf_counter()
            done = step + 1
            lr = lr_at(step, cfg.train.max_steps, cfg.optim)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            batches = loader.next_step()
            stage.log_step = done % cfg.logging.every_steps == 0 or done == cfg.train.max_steps
            targets = int(all_reduce_sum([float(sum(stage.count_targets(b) for b in batches))])[0])
            items_per_micro = max(targets, 1) / (accum * world)
            if sp:
                batches = sp.shard(batches)
            sums: dict[str, float] = {}
            for i, batch in enumerate(batches):
                loss, stats = (sp or stage).micro_step(engine, batch, items_per_micro)
                engine.backward(loss)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                if i < len(batches) - 1:
                    engine.step()
            keys = sorted(sums)
            sums = dict(zip(keys, all_reduce_sum([sums[k] for k in keys])))
            record = stage.step_metrics(sums, targets, ctx)
            step_loss = record["loss"]
            reason = "no_targets" if targets == 0 else guard.check(step_loss)
            optimizer.skip_next = reason is not None
            log_now = stage.log_step or reason is not None
            full_grad_norm = grad_norm_before_step(engine, cfg) if log_now else None
            engine.step()  # the accumulation boundary: update (or skip) and clear gradients
            guard.record(step_loss, reason, done)
            progress.tokens_seen += tokens_per_step
            dt = time.perf_counter() - t0
            interval_tokens += tokens_per_step
            interval_time += dt
            losses.append((done, step_loss))
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if log_now:
                grad_norm = full_grad_norm if full_grad_norm is not None else step_grad_norm(engine)
                record = {
                    "step": done,
                    **record,
                    "lr": lr,
                    "grad_norm": None if grad_norm is None or reason else float(grad_norm),
                    "targets": targets,
                    "tokens_per_sec": interval_tokens / interval_time,
                    "tflops": interval_tokens * flops_tok / interval_time / 1e12,
                    "mfu": interval_tokens * flops_tok / interval_time / (peak * world),
                    "tokens_seen": progress.tokens_seen,
                    "step_time_s": dt,
                    "skipped_steps": guard.skipped_total,
                    "memory_gb": memory_gb(),
                }
                if reason:
                    record["skip_reason"] = reason
                record.update(peak_record)
                peak_record = {}
                monitor.log(record)
                interval_tokens, interval_time = 0, 0.0
            if self._eval_due(done):
                evals.append((done, evaluate(done)))
            if cfg.eval.suite.due(done, last=done == cfg.train.max_steps):
                evaluate_suite(done)
            if done == cfg.train.stop_at_step:
                break
            if done % cfg.checkpoint.every_steps == 0 and done != cfg.train.max_steps:
                last_ckpt = save(done)
        bar.close()

        final_step = min(cfg.train.max_steps, cfg.train.stop_at_step or cfg.train.max_steps)
        finished = final_step == cfg.train.max_steps
        if last_ckpt is None or not last_ckpt.name.endswith(f"{final_step:08d}"):
            last_ckpt = save(final_step)
        summary = {"stage": stage.name, "run_dir": str(run_dir), "final_checkpoint": str(last_ckpt),
                   "steps": final_step, "finished": finished, "skipped_steps": guard.skipped_total,
                   "losses": losses, "evals": evals, "world_size": world, "peak_flops_source": peak_source,
                   "peak": device_peak.record(),
                   **stage.summary()}
        if rank == 0 and finished:
            pngs = [plot_loss(read_metrics(run_dir), run_dir / "loss.png"), *stage.plots(run_dir)]
            monitor.log_files([p for p in pngs if p])
        if finished and cfg.checkpoint.export_at_end:
            export_dir = run_dir / "export"
            if rank == 0:
                export_checkpoint(last_ckpt, export_dir)
                summary["export_dir"] = str(export_dir)
                for tag in stage.extra_engines():  # e.g. PPO's critic, when the stage saved its config
                    if (last_ckpt / f"hf_config_{tag}").is_dir():
                        export_checkpoint(last_ckpt, run_dir / f"export_{tag}", tag=tag)
                        summary[f"export_{tag}_dir"] = str(run_dir / f"export_{tag}")
            barrier()
            # Verify the export against the training model (all ranks run the forward: ZeRO-3).
            probe = stage.probe()
            outputs = module_outputs(engine.module, probe)
            if rank == 0:
                summary["export_max_logit_diff"] = export_output_diff(outputs, export_dir, probe)
                print(f"exported {export_dir}; max |output diff| vs training model: "
                      f"{summary['export_max_logit_diff']:.2e}")
        barrier()
        monitor.finish()
        return summary
