"""Reward model: a scalar head on a causal LM (``AutoModelForSequenceClassification``, one label),
trained with the Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)`` on preference pairs.

Each pair is the prompt conversation followed once by the chosen and once by the rejected reply,
rendered with the chat template; the score is read at the last non-pad token. Micro-batches hold
``micro_batch_size`` pairs (chosen rows, then rejected rows), right-padded to their longest row.
Held-out pairs report accuracy (chosen scored above rejected), mean margin and loss, per source
and per language.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from patentgpt.data.chat import record_lang, to_pair
from patentgpt.data.chat_loader import WeightedStream, rank_slices, render_chat
from patentgpt.errors import DataError
from patentgpt.train.config import RewardConfig
from patentgpt.train.stage import Stage
from patentgpt.train.stages.records import group_name, read_sources, report_line, write_rejects


def pad_pairs(pairs: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> torch.Tensor:
    """[2 x pairs, longest] input ids: chosen rows first, then rejected rows, right-padded."""
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    out = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


class PairLoader:
    """Per optimizer step, this rank's micro-batches of preference pairs (global stream, resumable)."""

    def __init__(self, sources, *, micro_batch_size: int, grad_accum_steps: int, world_size: int, rank: int,
                 seed: int, pad_id: int):
        self.stream = WeightedStream(sources, seed)
        self.micro, self.accum, self.world, self.rank, self.pad_id = micro_batch_size, grad_accum_steps, world_size, rank, pad_id

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        pairs = [self.stream.take() for _ in range(self.micro * self.accum * self.world)]
        return [{"input_ids": pad_pairs(part, self.pad_id)}
                for part in rank_slices(pairs, self.micro, self.accum, self.world, self.rank)]

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def pair_scores(module_or_engine, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rewards, rejected rewards) of a micro-batch."""
    rewards = module_or_engine(input_ids=input_ids, use_cache=False).logits.squeeze(-1).float()
    half = input_ids.shape[0] // 2
    return rewards[:half], rewards[half:]


class RewardStage(Stage):
    name = "rm"

    def __init__(self, cfg: RewardConfig):
        super().__init__(cfg)
        self.train_sources: list = []
        self.eval_groups: dict[str, list[dict]] = {}
        self.eval_langs: dict[str, str | None] = {}
        self.data_report: dict = {}

    def _encode(self, prompt: list[dict], reply: str) -> np.ndarray:
        text = render_chat(self.tokenizer, [*prompt, {"role": "assistant", "content": reply}])
        return np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def _convert(self, record: dict, spec):
        pair, reason = to_pair(record)
        if reason is None:
            prompt, chosen, rejected = pair
            c, r = self._encode(prompt, chosen), self._encode(prompt, rejected)
            if max(len(c), len(r)) > self.cfg.data.max_len:
                reason = "longer_than_max_len"
        return (None, None, reason) if reason else ((c, r), record_lang(record, prompt), None)

    def setup(self, ctx):
        from transformers import AutoTokenizer

        cfg = self.cfg
        self.tokenizer = ctx.tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer or cfg.model.init_from)
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError("the tokenizer has no chat template; the reward model renders pairs with it")
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_id is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token to pad pairs with")
        splits, rejects = read_sources(cfg.data.sources, self._convert, holdout=cfg.eval.holdout, seed=cfg.run.seed,
                                       what="preference pair")
        lengths = []
        for spec, split in zip(cfg.data.sources, splits):
            self.data_report[spec.name] = split.report
            self.train_sources.append((spec.name, split.train, spec.weight))
            lengths += [len(c) + len(r) for c, r in split.train]
            for lang, pairs in split.held_by_lang.items():
                pairs = pairs[: ctx.micro * cfg.eval.max_batches]
                group = group_name(spec.name, lang, len(split.held_by_lang))
                self.eval_groups[group] = [{"input_ids": pad_pairs(pairs[k:k + ctx.micro], self.pad_id)}
                                           for k in range(0, len(pairs), ctx.micro)]
                self.eval_langs[group] = lang
        self.mean_pair_tokens = float(np.mean(lengths))
        if ctx.rank == 0:
            write_rejects(ctx.run_dir / "rejects.jsonl", rejects)
            print(f"rm data: {report_line(self.data_report)}")

    def build_model(self, ctx):
        from transformers import AutoModelForSequenceClassification

        from patentgpt.model.build import hf_config, round_up
        from patentgpt.model.kernels import prepare_kernels

        m = self.cfg.model
        prepare_kernels(m.attn_implementation, m.experts_implementation if m.arch == "mixtral" else None)
        if m.init_from:
            model = AutoModelForSequenceClassification.from_pretrained(
                m.init_from, num_labels=1, dtype=ctx.dtype, trust_remote_code=m.trust_remote_code,
                attn_implementation=m.attn_implementation)
        else:
            config = hf_config(m, m.vocab_size or round_up(len(self.tokenizer)), self.tokenizer)
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config, dtype=ctx.dtype,
                                                                   attn_implementation=m.attn_implementation)
        model.config.pad_token_id = self.pad_id  # the score is read at the last non-pad token
        if getattr(model.config, "num_local_experts", 0):
            model.config.output_router_logits = False
        return model

    def make_loader(self, ctx):
        self.loader = PairLoader(self.train_sources, micro_batch_size=ctx.micro, grad_accum_steps=ctx.accum,
                                 world_size=ctx.world, rank=ctx.rank, seed=self.cfg.run.seed, pad_id=self.pad_id)
        return self.loader

    def count_targets(self, batch):
        return batch["input_ids"].shape[0] // 2

    def micro_step(self, engine, batch, items_per_micro):
        chosen, rejected = pair_scores(engine, batch["input_ids"])
        margin = chosen - rejected
        loss_sum = -F.logsigmoid(margin).sum()
        m = margin.detach()  # statistics stay tensors: the core reads them back once per step
        return loss_sum / items_per_micro, {"loss_sum": loss_sum.detach().double(),
                                            "correct": (m > 0).sum().double(), "margin_sum": m.sum().double()}

    def step_metrics(self, sums, targets, ctx):
        n = max(targets, 1)
        return {"loss": sums["loss_sum"] / n, "accuracy": sums["correct"] / n, "margin": sums["margin_sum"] / n}

    @torch.no_grad()
    def evaluate(self, engine, ctx):
        if not self.eval_groups:
            return {}
        module = engine.module
        was_training = module.training
        module.eval()
        totals: dict[str, list[float]] = {}
        for name, batches in self.eval_groups.items():
            acc = [0.0, 0.0, 0.0, 0]  # loss, correct, margin, pairs
            for batch in batches:
                device = next(module.parameters()).device
                chosen, rejected = pair_scores(module, batch["input_ids"].to(device))
                margin = chosen - rejected
                acc[0] += float(-F.logsigmoid(margin).sum())
                acc[1] += float((margin > 0).sum())
                acc[2] += float(margin.sum())
                acc[3] += len(margin)
            totals[name] = acc
        module.train(was_training)
        out: dict[str, float] = {}

        def put(prefix, a):
            if a[3]:
                out.update({f"{prefix}loss": a[0] / a[3], f"{prefix}accuracy": a[1] / a[3],
                            f"{prefix}margin": a[2] / a[3]})

        by_lang: dict[str, list[float]] = {}
        for name, a in totals.items():
            put(f"val/{name}/", a)
            lang = self.eval_langs.get(name)
            if lang:
                by_lang[lang] = [x + y for x, y in zip(by_lang.get(lang, [0.0, 0.0, 0.0, 0]), a)]
        for lang, a in sorted(by_lang.items()):
            put(f"val/lang_{lang}/", a)
        put("val/", [sum(a[i] for a in totals.values()) for i in range(4)])
        return out

    def tokens_per_step(self, ctx):
        return int(ctx.global_batch * self.mean_pair_tokens)

    def sequence_length(self):
        return self.cfg.data.max_len

    def probe(self):
        ids = self.loader.next_step()[0]["input_ids"][:1]
        return {"input_ids": ids}

    def summary(self):
        return {"data": self.data_report}
