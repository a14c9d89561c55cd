"""PPO on the training core: the core's engine is the ACTOR, one core step is one PPO optimizer
step of actor and critic on one mini-batch, and the stage's loader is the rollout buffer.

When its mini-batches are used up, the buffer runs a PPO *iteration*: ``ppo.rollout_batch_size``
prompts are generated in chunks of ``ppo.generation_batch_size`` (chunk ``c`` of iteration ``i``
samples under a seed of its own, and chunks are dealt round-robin to the ranks, so the rollout
does not depend on the number of ranks), scored (actor log-probs recomputed by the training
forward, frozen reference log-probs, critic values, reward-model score at the end of the
response plus a programmatic reward), gathered on every rank, and turned into per-token rewards
(KL penalty, score on the last token), GAE advantages (whitened) and returns. It then yields
``ppo_epochs`` x (rollout / global batch) steps of mini-batches, reshuffled each epoch.

The CRITIC is a second DeepSpeed engine owned by the stage: an ``AutoModelForSequenceClassification``
started from the reward-model export, whose one-label score head read at every token gives the
values (the backbone's hidden states -> ``score``), so its HF export is again a reward-model-shaped
directory. It is trained inside :meth:`PPOStage.micro_step` (its own backward / step, same
accumulation as the actor), saved in every checkpoint (``extra_engines``) and exported at the end
to ``RUN_DIR/export_critic``. Reference and reward model are frozen (DeepSpeed inference
engines under ZeRO-3, plain modules otherwise).

Checkpoints fall on iteration boundaries (the config checks it), so the state is the prompt
stream position, the iteration counter, the KL coefficient and the reward normaliser.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from patentgpt.data.chat_loader import WeightedStream, rank_slices, render_chat
from patentgpt.errors import ConfigError, DataError
from patentgpt.io import atomic_write_text
from patentgpt.train.config import PPOConfig
from patentgpt.train.lm import CausalLMStage
from patentgpt.train.stages.ppo import rollout as ro
from patentgpt.train.stages.ppo.advantages import gae, whiten
from patentgpt.train.stages.ppo.kl import KLController, kl_per_token
from patentgpt.train.stages.ppo.losses import entropy, policy_loss, token_logprobs, value_loss
from patentgpt.train.stages.ppo.rewards import Sample, resolve
from patentgpt.train.stages.records import read_sources, report_line, write_rejects

EVAL_ITERATION = 2**31 - 1  # the seed "iteration" of held-out generation


class RunningMoments:
    """Running mean and variance of reward-model scores (Chan et al.'s parallel update)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        n, mean, var = x.numel(), float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = mean - self.mean
        self.m2 += var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 and self.m2 > 0 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class RolloutBuffer:
    """The stage's loader: hands out this rank's micro-batches step by step and runs a new PPO
    iteration when they are used up. State (saved at iteration boundaries only): prompt stream,
    iteration, KL coefficient, reward normaliser."""

    def __init__(self, stage: "PPOStage", stream: WeightedStream):
        self.stage, self.stream = stage, stream
        self.iteration = 0
        p = stage.cfg.ppo
        self.kl = KLController(p.kl_coef, p.kl_target, p.kl_horizon)
        self.reward_norm = RunningMoments()
        self.queue: list[list[dict]] = []
        self.resumed_at: int | None = None  # the iteration a resumed run starts from (None: a fresh run)

    def next_step(self) -> list[dict]:
        if not self.queue:
            self.queue = self.stage.run_iteration(self)
            self.iteration += 1
        self.stage.step_started = time.perf_counter()
        return self.queue.pop(0)

    def state_dict(self) -> dict:
        if self.queue:
            raise RuntimeError(f"PPO checkpoint inside iteration {self.iteration} ({len(self.queue)} steps left); "
                               "checkpoint.every_steps must be a multiple of the steps per iteration")
        return {"stream": self.stream.state_dict(), "iteration": self.iteration, "kl": self.kl.state_dict(),
                "reward_norm": self.reward_norm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.iteration = int(state["iteration"])
        self.resumed_at = self.iteration
        self.kl.load_state_dict(state["kl"])
        self.reward_norm.load_state_dict(state["reward_norm"])
        self.queue = []


def _iteration_of(line: str) -> float:
    """A log record's iteration; a torn or unreadable line counts as after every checkpoint."""
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def all_gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


class PPOStage(CausalLMStage):
    name = "ppo"

    def __init__(self, cfg: PPOConfig):
        super().__init__(cfg)
        self.data_report: dict = {}
        self.train_sources: list = []
        self.eval_prompts: list = []
        self.rollout_metrics: dict = {}
        self.step_started = time.perf_counter()
        self._micro = 0
        self._critic_bad = 0.0
        self._ref_copy = None
        self.reward_fn = resolve(cfg.ppo.reward_fn) if cfg.ppo.reward_fn else None

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, ctx):
        from patentgpt.train.stages.ppo.prompts import prompt_converter

        from patentgpt.config.checks import check_hf_model_dir

        cfg = self.cfg
        for key in ("ref_from", "critic_from", "reward_model"):
            if getattr(cfg.ppo, key):
                check_hf_model_dir(getattr(cfg.ppo, key), f"ppo.{key}")
        tok = self.load_tokenizer(cfg.data.tokenizer or cfg.model.init_from, ctx)
        if not getattr(tok, "chat_template", None):
            raise DataError("the tokenizer has no chat template; PPO renders prompts with it")
        self.tokenizer = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_id is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token")
        stops = {tok.eos_token_id}
        im_end = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
        self.stop_ids = sorted(i for i in stops | {im_end} if i is not None)
        p = cfg.ppo
        gen_total = p.generation_batch_size * ctx.world
        if p.rollout_batch_size % gen_total:
            raise ConfigError(f"ppo.rollout_batch_size {p.rollout_batch_size} must be a multiple of "
                              f"ppo.generation_batch_size {p.generation_batch_size} x {ctx.world} ranks")
        splits, rejects = read_sources(cfg.data.sources, prompt_converter(tok, cfg.data.max_prompt_len),
                                       holdout=cfg.eval.holdout, seed=cfg.run.seed, what="prompt")
        for spec, split in zip(cfg.data.sources, splits):
            self.data_report[spec.name] = split.report
            self.train_sources.append((spec.name, split.train, spec.weight))
            held = [item for items in split.held_by_lang.values() for item in items]
            self.eval_prompts += held[: ctx.micro * cfg.eval.max_batches]
        if ctx.rank == 0:
            write_rejects(ctx.run_dir / "rejects.jsonl", rejects)
            print(f"ppo prompts: {report_line(self.data_report)}")

    def build_model(self, ctx):
        model = super().build_model(ctx)  # the actor: model.init_from (the SFT export) or fresh
        if not (self.cfg.ppo.ref_from or self.cfg.model.init_from):
            if self.cfg.deepspeed.zero_stage == 3:
                raise ConfigError("ppo.ref_from: required under ZeRO-3 when model.init_from is null")
            self._ref_copy = copy.deepcopy(model)
        return model

    def _frozen(self, model, ds_config):
        model.requires_grad_(False)
        model.eval()
        if self.cfg.deepspeed.zero_stage == 3:
            import deepspeed

            cfg = {k: v for k, v in ds_config.items() if k not in ("gradient_clipping",)}
            return deepspeed.initialize(model=model, config=cfg)[0].module
        return model.to("cuda" if torch.cuda.is_available() else "cpu")

    def _seq_cls(self, path, ctx):
        from transformers import AutoModelForSequenceClassification

        from patentgpt.model.build import hf_config

        m = self.cfg.model
        if path:
            return AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=ctx.dtype, trust_remote_code=m.trust_remote_code,
                attn_implementation=m.attn_implementation)
        config = hf_config(m, self.vocab, self.tokenizer)
        config.num_labels = 1
        return AutoModelForSequenceClassification.from_config(config, dtype=ctx.dtype,
                                                              attn_implementation=m.attn_implementation)

    def make_loader(self, ctx):
        from transformers import AutoModelForCausalLM

        from patentgpt.train.engine import deepspeed_config, make_engine, model_construction

        cfg, p = self.cfg, self.cfg.ppo
        self.ctx, self.engine = ctx, ctx.extras["engine"]
        self.zero3 = cfg.deepspeed.zero_stage == 3
        ds_config = deepspeed_config(cfg, ctx.micro, ctx.accum, ctx.global_batch)
        with model_construction(ds_config):
            ref_path = p.ref_from or cfg.model.init_from
            ref = (AutoModelForCausalLM.from_pretrained(ref_path, dtype=ctx.dtype,
                                                        attn_implementation=cfg.model.attn_implementation)
                   if ref_path else self._ref_copy)
            critic = self._seq_cls(p.critic_from, ctx)
            rm = self._seq_cls(p.reward_model, ctx) if p.reward_model else None
        self._ref_copy = None
        self.ref = self._frozen(ref, ds_config)
        self.rm = self._frozen(rm, ds_config) if rm is not None else None
        critic.config.architectures = [type(critic).__name__]
        critic.config.pad_token_id = self.pad_id
        self.critic_model = critic
        self.critic_engine, self.critic_optimizer = make_engine(critic, cfg, ds_config)
        self.critic_engine.train()
        self.samples_path = ctx.run_dir / "samples.jsonl"
        self.buffer = RolloutBuffer(self, WeightedStream(self.train_sources, cfg.run.seed))
        return self.buffer

    # -- a PPO iteration ------------------------------------------------------------------------
    def _score_texts(self, items, responses, finished) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward-model scores, programmatic rewards) of decoded responses."""
        tok, p = self.tokenizer, self.cfg.ppo
        texts = [tok.decode(r, skip_special_tokens=True) for r in responses]
        rm = torch.zeros(len(texts))
        if self.rm is not None:
            rows = [tok(render_chat(tok, [*item[1], {"role": "assistant", "content": t}]),
                        add_special_tokens=False)["input_ids"] for item, t in zip(items, texts)]
            ids, mask = ro.left_pad([r[::-1] for r in rows], self.pad_id)  # right-pad: pad reversed rows, flip
            ids, mask = ids.flip(1), mask.flip(1)
            rm = ro.end_scores(self.rm, {"input_ids": ids, "attention_mask": mask,
                                         "position_ids": ro.position_ids(mask)})
        prog = torch.zeros(len(texts))
        if self.reward_fn is not None:
            for i, (item, t, r, f) in enumerate(zip(items, texts, responses, finished)):
                s = Sample(prompt=item[1], response=t, response_ids=list(r), answer=item[2], finished=f,
                           pieces=[tok.decode([x]) for x in r])
                prog[i] = float(self.reward_fn(s, **p.reward_fn_args))
        return rm, prog

    @torch.no_grad()
    def _chunk(self, items, seed: int) -> dict:
        """Generate and score one chunk of prompts (every forward here is collective under ZeRO-3)."""
        p = self.cfg.ppo
        prompt_ids, prompt_mask = ro.left_pad([item[0] for item in items], self.pad_id)
        timings = {}
        t = time.perf_counter()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            gen = ro.generate(self.engine.module, prompt_ids, prompt_mask, max_new_tokens=p.max_new_tokens,
                              temperature=p.temperature, top_p=p.top_p, pad_id=self.pad_id,
                              stop_ids=self.stop_ids, zero3=self.zero3)
        timings["generation_s"] = time.perf_counter() - t
        response, rmask = gen["response"], gen["response_mask"]
        inputs = ro.sequence_inputs(prompt_ids, prompt_mask, response, rmask)
        P = prompt_ids.shape[1]
        t = time.perf_counter()
        actor = self.engine.module
        was = actor.training
        actor.eval()
        old_logp = token_logprobs(ro.action_logits(actor, inputs, P), response.to(actor.device), p.temperature).cpu()
        actor.train(was)
        timings["actor_logp_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ref_logp = token_logprobs(ro.action_logits(self.ref, inputs, P), response.to(self.ref.device),
                                  p.temperature).cpu()
        timings["reference_s"] = time.perf_counter() - t
        t = time.perf_counter()
        critic = self.critic_engine.module
        critic.eval()
        values = ro.action_values(critic, inputs, P).cpu()
        critic.train()
        timings["critic_s"] = time.perf_counter() - t
        t = time.perf_counter()
        lengths = rmask.sum(-1)
        responses = [response[i, : int(lengths[i])].tolist() for i in range(len(items))]
        finished = [bool(r) and r[-1] in self.stop_ids for r in responses]
        rm, prog = self._score_texts(items, [r[:-1] if f else r for r, f in zip(responses, finished)], finished)
        timings["reward_s"] = time.perf_counter() - t
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response": response, "response_mask": rmask,
                "old_logp": old_logp, "ref_logp": ref_logp, "values": values, "rm": rm, "prog": prog,
                "finished": torch.tensor(finished), "timings": timings}

    def run_iteration(self, buf: RolloutBuffer) -> list[list[dict]]:
        """Generate, score and prepare one rollout; returns this rank's steps of micro-batches."""
        cfg, p, ctx = self.cfg, self.cfg.ppo, self.ctx
        it = buf.iteration
        t0 = time.perf_counter()
        items = [buf.stream.take() for _ in range(p.rollout_batch_size)]  # the global batch, every rank
        g = p.generation_batch_size
        mine = {c: self._chunk(items[c * g:(c + 1) * g], ro.chunk_seed(cfg.run.seed, it, c))
                for c in range(ctx.rank, len(items) // g, ctx.world)}
        chunks = {c: d for part in all_gather(mine, ctx.world) for c, d in part.items()}
        order = [chunks[c] for c in sorted(chunks)]
        cat = lambda key, left=False, value=0: ro.pad_cat([d[key] for d in order], left, value)  # noqa: E731
        roll = {"prompt_ids": cat("prompt_ids", True, self.pad_id), "prompt_mask": cat("prompt_mask", True),
                "response": cat("response", False, self.pad_id), "response_mask": cat("response_mask"),
                "old_logp": cat("old_logp"), "ref_logp": cat("ref_logp"), "values": cat("values")}
        mask = roll["response_mask"].float()
        rm = torch.cat([d["rm"] for d in order])
        prog = torch.cat([d["prog"] for d in order])
        finished = torch.cat([d["finished"] for d in order])
        timings = {k: sum(d["timings"][k] for d in order) / ctx.world for k in order[0]["timings"]}

        # rewards: normalised reward-model score + programmatic reward, clipped, on the last token
        score = torch.zeros_like(rm)
        if self.rm is not None:
            if p.normalize_reward:
                buf.reward_norm.update(rm)
                score = (rm - buf.reward_norm.mean) / buf.reward_norm.std
            else:
                score = rm.clone()
        score = (score + p.reward_fn_weight * prog).clamp(-p.reward_clip, p.reward_clip)
        kl = kl_per_token(roll["old_logp"], roll["ref_logp"], p.kl_estimator) * mask
        rewards = -buf.kl.coef * kl
        last = (mask.sum(-1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(score)), last] += score
        adv, returns = gae(rewards, roll["values"], mask, p.gamma, p.lam)
        if p.whiten_advantages:
            adv = whiten(adv, mask)
        roll.update(advantages=adv, returns=returns)
        kl_seq = kl.sum(-1)
        kl_coef = buf.kl.coef
        buf.kl.update(float(kl_seq.mean()), len(score))

        n_tok = float(mask.sum())
        self.rollout_metrics = {
            "iteration": it + 1, "reward_mean": float(score.mean()), "reward_std": float(score.std()),
            "kl": float(kl_seq.mean()), "kl_coef": kl_coef, "response_length": n_tok / len(score),
            "finished_fraction": float(finished.float().mean()),
            "gen_tokens_per_sec": n_tok / max(timings["generation_s"], 1e-9),  # all ranks together
            **({"rm_score_mean": float(rm.mean()), "rm_score_std": float(rm.std())} if self.rm is not None else {}),
            **({"fn_reward_mean": float(prog.mean())} if self.reward_fn is not None else {}),
            **{f"time/{k}": v for k, v in timings.items()}, "time/iteration_s": time.perf_counter() - t0,
        }
        self._write_samples(it + 1, items, roll, score, rm, prog, kl_seq)
        self._probe_ids = torch.tensor([items[0][0]], dtype=torch.long)

        steps = []
        G = ctx.global_batch
        for epoch in range(p.ppo_epochs):
            perm = np.random.default_rng([cfg.run.seed, it, epoch]).permutation(len(items))
            for k in range(len(items) // G):
                parts = rank_slices(list(perm[k * G:(k + 1) * G]), ctx.micro, ctx.accum, ctx.world, ctx.rank)
                steps.append([self._micro_batch(roll, rows) for rows in parts])
        return steps

    @staticmethod
    def _micro_batch(roll: dict, rows: list[int]) -> dict:
        idx = torch.as_tensor(rows, dtype=torch.long)
        pm, rmask = roll["prompt_mask"][idx], roll["response_mask"][idx]
        start = int((pm.sum(0) > 0).float().argmax())  # drop columns that are padding in every row
        R = max(int(rmask.sum(-1).max()), 1)
        seq = ro.sequence_inputs(roll["prompt_ids"][idx][:, start:], pm[:, start:], roll["response"][idx][:, :R],
                                 rmask[:, :R])
        return {**seq, "prompt_len": torch.tensor(pm.shape[1] - start), "action_mask": rmask[:, :R],
                **{k: roll[k][idx][:, :R] for k in ("old_logp", "values", "advantages", "returns")}}

    def _write_samples(self, iteration, items, roll, score, rm, prog, kl_seq) -> None:
        n = self.cfg.ppo.samples_per_iteration
        if self.ctx.rank != 0 or n == 0:
            return
        tok = self.tokenizer
        rows = []
        for i in range(min(n, len(items))):
            L = int(roll["response_mask"][i].sum())
            rows.append({"iteration": iteration, "prompt": items[i][1][-1]["content"],
                         "response": tok.decode(roll["response"][i, :L].tolist(), skip_special_tokens=True),
                         "score": float(score[i]), "rm_score": float(rm[i]), "fn_reward": float(prog[i]),
                         "kl": float(kl_seq[i])})
        self._append_log(self.samples_path, rows)
        try:
            import wandb

            if wandb.run is not None:
                cols = list(rows[0])
                wandb.run.log({"ppo/samples": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])},
                              commit=False)
        except Exception:  # noqa: BLE001 - monitoring never stops training
            pass

    # -- a PPO optimizer step -------------------------------------------------------------------
    def count_targets(self, batch):
        return int(batch["action_mask"].sum())

    def micro_step(self, engine, batch, items_per_micro):
        p, ctx = self.cfg.ppo, self.ctx
        P = int(batch["prompt_len"])
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        mask = batch["action_mask"].to(engine.device).float()
        tokens = batch["input_ids"][:, P:].to(engine.device)
        logits = ro.action_logits(engine, inputs, P)
        logp = token_logprobs(logits, tokens, p.temperature)
        ent = entropy(logits, p.temperature)
        pg_sum, stats = policy_loss(logp, batch["old_logp"].to(logp.device), batch["advantages"].to(logp.device),
                                    mask, p.clip_ratio)
        ent_sum = (ent * mask).sum()
        loss = (pg_sum - p.entropy_coef * ent_sum) / items_per_micro

        # the critic: its own backward and step (DeepSpeed applies it at the accumulation boundary)
        if self._micro == 0:
            scale = engine.optimizer.param_groups[0]["lr"] / self.cfg.optim.lr
            for group in self.critic_engine.optimizer.param_groups:
                group["lr"] = p.critic_lr * scale
        values = ro.action_values(self.critic_engine.module, inputs, P)
        v_sum, vstats = value_loss(values, batch["values"].to(values.device), batch["returns"].to(values.device),
                                   mask, p.value_clip)
        self.critic_engine.backward(v_sum / items_per_micro)
        self._critic_bad += float(not (math.isfinite(vstats["value_loss_sum"]) and
                                       math.isfinite(stats["policy_loss_sum"])))
        self._micro += 1
        if self._micro == ctx.accum:
            from patentgpt.train.dist import all_reduce_sum

            self.critic_optimizer.skip_next = all_reduce_sum([self._critic_bad])[0] > 0
            self._micro, self._critic_bad = 0, 0.0
        self.critic_engine.step()
        stats.update(vstats)
        stats["entropy_sum"] = float(ent_sum.detach())
        stats["tokens"] = float(batch["attention_mask"].sum())
        stats["loss_sum"] = stats["policy_loss_sum"] + vstats["value_loss_sum"]
        return loss, stats

    def step_metrics(self, sums, targets, ctx):
        n = max(targets, 1)
        dt = max(time.perf_counter() - self.step_started, 1e-9)
        return {"loss": sums["loss_sum"] / n, "policy_loss": sums["policy_loss_sum"] / n,
                "value_loss": sums["value_loss_sum"] / n, "clip_fraction": sums["clipped"] / n,
                "value_clip_fraction": sums["value_clipped"] / n, "approx_kl": sums["approx_kl_sum"] / n,
                "entropy": sums["entropy_sum"] / n, "train_tokens_per_sec": sums["tokens"] / dt,
                **self.rollout_metrics}

    # -- held-out prompts -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, engine, ctx):
        """Reward, KL to the reference and response length of sampled responses to held-out prompts
        (``ppo.eval_samples`` each, the same seeds every time). The reward is the reward model's RAW
        score (plus the weighted programmatic reward): the running normaliser of the rollouts
        changes during training, so a normalised held-out reward would put "before" and "after" on
        different scales. Its spread over the prompts (of each prompt's mean over its samples)
        comes with it, and every response and score goes to ``heldout.jsonl`` (so before / after
        can be paired prompt by prompt)."""
        if not self.eval_prompts:
            return {}
        g, tok, k = self.cfg.ppo.generation_batch_size, self.tokenizer, self.cfg.ppo.eval_samples
        scores, kls, lengths, rows = [], [], [], []
        for sample in range(k):
            for c in range(0, len(self.eval_prompts), g):
                items = self.eval_prompts[c:c + g]
                # sample 0 keeps the seeds of a one-sample evaluation
                d = self._chunk(items, ro.chunk_seed(self.cfg.run.seed, EVAL_ITERATION - sample, c))
                mask = d["response_mask"].float()
                score = d["rm"] + self.cfg.ppo.reward_fn_weight * d["prog"]
                kl = (kl_per_token(d["old_logp"], d["ref_logp"], "k1") * mask).sum(-1)
                scores.append(score)
                kls.append(kl)
                lengths.append(mask.sum(-1))
                for i, item in enumerate(items):
                    L = int(mask[i].sum())
                    rows.append({"prompt_index": c + i, "sample": sample, "prompt": item[1][-1]["content"],
                                 "response": tok.decode(d["response"][i, :L].tolist(), skip_special_tokens=True),
                                 "reward": float(score[i]), "rm_score": float(d["rm"][i]),
                                 "finished": bool(d["finished"][i]), "kl": float(kl[i])})
        s = torch.cat(scores).view(k, -1).mean(0)  # each prompt's mean reward over its samples
        self._write_heldout(rows)
        return {"val/reward": float(s.mean()), "val/reward_std": float(s.std()) if len(s) > 1 else 0.0,
                "val/reward_sem": float(s.std() / math.sqrt(len(s))) if len(s) > 1 else 0.0,
                "val/kl": float(torch.cat(kls).mean()), "val/response_length": float(torch.cat(lengths).mean()),
                "val/finished_fraction": sum(r["finished"] for r in rows) / len(rows)}

    def _write_heldout(self, rows: list[dict]) -> None:
        """Append this evaluation's held-out responses to ``heldout.jsonl`` (rank 0; an append-only
        log like samples.jsonl), tagged with the PPO iteration (0 = before training)."""
        if self.ctx.rank != 0:
            return
        it = self.buffer.iteration if getattr(self, "buffer", None) is not None else 0
        self._append_log(self.ctx.run_dir / "heldout.jsonl", [{"iteration": it, **r} for r in rows])

    def _append_log(self, path: Path, rows: list[dict]) -> None:
        """Append to an append-only JSONL log of the run (like metrics.jsonl). The first append of
        this process keeps only the records of iterations up to the checkpoint it resumed from
        (none in a fresh run), so a relaunch in the same run directory starts the log anew."""
        started = self.__dict__.setdefault("_logs_started", set())
        if path not in started:
            started.add(path)
            keep_upto = self.buffer.resumed_at if getattr(self, "buffer", None) is not None else None
            old = []
            if path.is_file() and keep_upto is not None:
                old = [line for line in path.read_text(encoding="utf-8").splitlines()
                       if line.strip() and _iteration_of(line) <= keep_upto]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, "".join(line + "\n" for line in old))
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    # -- core hooks ---------------------------------------------------------------------------
    def states(self):
        return {}

    def extra_engines(self):
        return {"critic": self.critic_engine}

    def extra_files(self):
        return {"hf_config_critic": lambda path: self.critic_model.config.save_pretrained(path)}

    def sequence_length(self):
        return self.cfg.data.max_prompt_len + self.cfg.ppo.max_new_tokens

    def tokens_per_step(self, ctx):
        return ctx.global_batch * self.sequence_length()

    def probe(self):
        ids = getattr(self, "_probe_ids", None)  # none when a finished run is relaunched
        return {"input_ids": ids if ids is not None else torch.tensor([self.train_sources[0][1][0][0]])}

    def plots(self, run_dir: Path) -> list[Path]:
        from patentgpt.train.monitor import read_metrics
        from patentgpt.train.plots import _plt

        rows = [r for r in read_metrics(run_dir) if "reward_mean" in r]
        if not rows:
            return []
        plt = _plt()
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        steps = [r["step"] for r in rows]
        mean = np.array([r["reward_mean"] for r in rows])
        std = np.array([r["reward_std"] for r in rows])
        a.plot(steps, mean, label="reward (mean)")
        a.fill_between(steps, mean - std, mean + std, alpha=0.2, label="± std")
        vals = [r for r in read_metrics(run_dir) if "val/reward" in r]
        if vals:
            a.plot([r["step"] for r in vals], [r["val/reward"] for r in vals], "o--", label="held-out reward")
        a.set_xlabel("step")
        a.set_title("reward")
        a.legend()
        b.plot(steps, [r["kl"] for r in rows], label="KL to reference (per response)")
        b2 = b.twinx()
        b2.plot(steps, [r["kl_coef"] for r in rows], color="tab:orange", alpha=0.6, label="KL coefficient")
        b.set_xlabel("step")
        b.set_title("KL")
        b.legend(loc="upper left")
        b2.legend(loc="upper right")
        fig.tight_layout()
        out = run_dir / "ppo.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return [out]

    def summary(self):
        return {"data": self.data_report, "last_iteration": self.rollout_metrics}
