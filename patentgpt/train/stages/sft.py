"""Supervised fine-tuning: chat conversations, loss on assistant tokens only, packed rows.

Sources (``data.sources``) are chat JSONL / JSON files in the ``messages``, alpaca or sharegpt
format (:mod:`patentgpt.data.chat`), mixed by weight. Records that cannot be used are counted by
source and reason and written to ``RUN_DIR/rejects.jsonl``; nothing is dropped silently. With
``eval.holdout`` a seeded share of each source is held out and its assistant-only loss and
perplexity are reported per source and per language.
"""

from __future__ import annotations

import numpy as np

from patentgpt.data.chat import record_lang, to_messages
from patentgpt.data.chat_loader import PackedChatLoader, pack_eval_rows, tokenize_chat
from patentgpt.errors import DataError
from patentgpt.train.config import SFTConfig
from patentgpt.train.lm import CausalLMStage, micro_batches
from patentgpt.train.stages.records import group_name, read_sources, report_line, write_rejects


class SFTStage(CausalLMStage):
    name = "sft"

    def __init__(self, cfg: SFTConfig):
        super().__init__(cfg)
        self.train_sources: list = []
        self.data_report: dict = {}

    def _convert(self, record: dict, spec):
        messages, reason = to_messages(record, spec.format)
        if reason is None:
            ids, labels, reason = tokenize_chat(self.tokenizer, messages)
        if reason is None and len(ids) > self.cfg.data.seq_len:
            reason = "longer_than_seq_len"
        return (None, None, reason) if reason else ((ids, labels), record_lang(record, messages), None)

    def setup(self, ctx):
        cfg = self.cfg
        tok = self.tokenizer = self.load_tokenizer(cfg.data.tokenizer or cfg.model.init_from, ctx)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_id is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token to pad rows with")
        splits, rejects = read_sources(cfg.data.sources, self._convert, holdout=cfg.eval.holdout, seed=cfg.run.seed,
                                       what="conversation")
        for spec, split in zip(cfg.data.sources, splits):
            self.data_report[spec.name] = split.report
            self.train_sources.append((spec.name, split.train, spec.weight))
            for lang, examples in split.held_by_lang.items():
                rows = pack_eval_rows(examples, cfg.data.seq_len, self.pad_id, ctx.micro * cfg.eval.max_batches)
                group = group_name(spec.name, lang, len(split.held_by_lang))
                ids, labels, pos = (np.stack(col) for col in zip(*rows))
                self.eval_groups[group] = micro_batches({"input_ids": ids, "labels": labels, "position_ids": pos},
                                                        ctx.micro)
                self.eval_langs[group] = lang
        if ctx.rank == 0:
            write_rejects(ctx.run_dir / "rejects.jsonl", rejects)
            print(f"sft data: {report_line(self.data_report)}")

    def make_loader(self, ctx):
        cfg = self.cfg
        self.loader = PackedChatLoader(self.train_sources, seq_len=cfg.data.seq_len, micro_batch_size=ctx.micro,
                                       grad_accum_steps=ctx.accum, world_size=ctx.world, rank=ctx.rank,
                                       seed=cfg.run.seed, pad_id=self.pad_id, packing=cfg.data.packing)
        return self.loader

    def probe(self):
        batch = self.loader.next_step()[0]
        return {k: v[:1] for k, v in batch.items() if k != "labels"}

    def summary(self):
        return {"data": self.data_report}
