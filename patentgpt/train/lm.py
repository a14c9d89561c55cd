"""What the causal-LM stages (pretraining, SFT) share on the core: the token-normalised loss,
MoE statistics, held-out loss and perplexity by group, and the expert-load picture."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from patentgpt.data.loader import IGNORE
from patentgpt.train.stage import RunContext, Stage



def count_label_targets(labels: torch.Tensor) -> int:
    """Tokens that count in a causal-LM loss: labels shift left by one, -100 does not count."""
    return int((labels[..., 1:] != IGNORE).sum())


def micro_batches(columns: dict[str, np.ndarray], micro: int) -> list[dict[str, torch.Tensor]]:
    """Rows (``columns``: name -> [rows, seq] array) cut into validation micro-batches of ``micro`` rows."""
    rows = len(next(iter(columns.values())))
    return [{k: torch.from_numpy(v[i:i + micro]) for k, v in columns.items()} for i in range(0, rows, micro)]


@torch.no_grad()
def label_loss_sum(module, batch: dict) -> tuple[float, int]:
    """(sum of token losses, counted tokens) of ``batch`` under ``module`` (no labels passed in, so
    a MoE model adds no auxiliary loss)."""
    device = next(module.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    logits = module(**inputs, use_cache=False).logits.float()
    labels = batch["labels"].to(device)[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return float(loss), count_label_targets(batch["labels"])


def evaluate_groups(module, groups: dict[str, list[dict]], langs: dict[str, str | None]) -> dict[str, float]:
    """Held-out loss and perplexity per group, per language (``langs``: group -> language) and overall."""
    if not groups:
        return {}
    was_training = module.training
    module.eval()
    per_group = {}
    for name, batches in groups.items():
        total, n = 0.0, 0
        for batch in batches:
            s, c = label_loss_sum(module, batch)
            total, n = total + s, n + c
        per_group[name] = (total, n)
    module.train(was_training)

    out: dict[str, float] = {}

    def put(prefix: str, total: float, n: int) -> None:
        if n:
            out[f"{prefix}loss"] = total / n
            out[f"{prefix}ppl"] = math.exp(min(total / n, 50.0))

    by_lang: dict[str, list[float]] = {}
    for name, (total, n) in per_group.items():
        put(f"val/{name}/", total, n)
        lang = langs.get(name)
        if lang:
            acc = by_lang.setdefault(lang, [0.0, 0])
            acc[0] += total
            acc[1] += n
    for lang, (total, n) in sorted(by_lang.items()):
        put(f"val/lang_{lang}/", total, n)
    put("val/", sum(t for t, _ in per_group.values()), sum(n for _, n in per_group.values()))
    return out


class CausalLMStage(Stage):
    """A stage that trains a causal LM on batches of ``input_ids``, ``labels`` (-100 = not counted)
    and optionally ``position_ids`` (restarting per packed document)."""

    causal_lm = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.routing = None  # patentgpt.model.routing.RoutingControl of a MoE model
        self._entropy = None  # router entropy per layer, on logging steps
        self.eval_groups: dict[str, list[dict]] = {}
        self.eval_langs: dict[str, str | None] = {}

    def load_tokenizer(self, path: str, ctx: RunContext):
        """The run's tokenizer; sets the model's vocab size (config, else tokenizer size rounded up to 64)."""
        from transformers import AutoTokenizer

        from patentgpt.model.build import round_up
        from patentgpt.model.vocab import check_vocab

        tokenizer = AutoTokenizer.from_pretrained(path)
        self.vocab = self.cfg.model.vocab_size or round_up(len(tokenizer))
        check_vocab(self.vocab, tokenizer, where="model.vocab_size", max_extra_rows=None)
        ctx.tokenizer = tokenizer
        return tokenizer

    def build_model(self, ctx):
        from patentgpt.model.build import build_model
        from patentgpt.model.vocab import MAX_EXTRA_ROWS, check_vocab

        m = self.cfg.model
        model = build_model(m, self.vocab, dtype=ctx.dtype, tokenizer=ctx.tokenizer)
        check_vocab(model.config.vocab_size, ctx.tokenizer, where=f"model {m.init_from or m.arch}",
                    max_extra_rows=MAX_EXTRA_ROWS if m.init_from else None)
        if getattr(model.config, "num_local_experts", 0):
            from patentgpt.model.routing import RoutingControl
            from patentgpt.train.dist import all_reduce_sum

            self.routing = RoutingControl(model, m.router, world_reduce=all_reduce_sum, verbose=ctx.rank == 0)
        return model

    def count_targets(self, batch: dict) -> int:
        return count_label_targets(batch["labels"])

    def micro_step(self, engine, batch, items_per_micro):
        # transformers' loss divides the summed token losses by num_items_in_batch
        out = engine(**batch, num_items_in_batch=items_per_micro, use_cache=False)
        config = engine.module.config
        if self.routing is not None:
            from patentgpt.model.routing import router_entropy, router_z_loss

            aux = out.aux_loss.detach()
            ce = out.loss.detach() - config.router_aux_loss_coef * aux
            loss, stats = out.loss, {"loss_sum": ce.double() * items_per_micro, "aux_sum": aux.double()}
            z_coef = self.cfg.model.router.z_loss_coef
            if z_coef > 0:
                z = router_z_loss(out.router_logits)
                loss = loss + z_coef * z
                stats["z_sum"] = z.detach().double()
            elif self.log_step:  # logged, not optimised
                stats["z_sum"] = router_z_loss([lg.detach() for lg in out.router_logits]).double()
            if self.log_step:
                h = np.asarray(router_entropy(out.router_logits))
                self._entropy = h if self._entropy is None else self._entropy + h
            return loss, stats
        # statistics stay tensors: the core reads them back once per step, not per micro-batch
        return out.loss, {"loss_sum": out.loss.detach().double() * items_per_micro}

    def step_metrics(self, sums, targets, ctx):
        record = {"loss": sums["loss_sum"] / max(targets, 1)}
        if "aux_sum" in sums:
            coef = ctx.model.config.router_aux_loss_coef
            record["aux_loss"] = sums["aux_sum"] / (ctx.accum * ctx.world)
            record["lm_loss"] = record["loss"]
            record["loss"] = record["lm_loss"] + coef * record["aux_loss"]
            if "z_sum" in sums:
                record["z_loss"] = sums["z_sum"] / (ctx.accum * ctx.world)
                record["loss"] += self.cfg.model.router.z_loss_coef * record["z_loss"]
        if self.routing is not None:
            counts = self.routing.end_step()  # every step: balancing bias, dead-expert warnings
            if self.log_step:
                entropy = None if self._entropy is None else (self._entropy / ctx.accum).tolist()
                record.update(self.routing.metrics(counts, entropy))
                self._entropy = None
        return record

    def evaluate(self, engine, ctx):
        return evaluate_groups(engine.module, self.eval_groups, self.eval_langs)

    def tokens_per_step(self, ctx):
        return ctx.global_batch * self.sequence_length()

    def states(self):
        return {"routing": self.routing} if self.routing is not None else {}

    def plots(self, run_dir: Path) -> list[Path]:
        if self.routing is None:
            return []
        from patentgpt.model.routing import plot_expert_load
        from patentgpt.train.monitor import read_metrics

        png = plot_expert_load(read_metrics(run_dir), run_dir / "expert_load.png")
        return [png] if png else []
