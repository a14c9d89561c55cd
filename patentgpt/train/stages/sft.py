"""Supervised fine-tuning: chat conversations, loss on assistant tokens only, packed rows.

Sources (``data.sources``) are chat JSONL / JSON files in the ``messages``, alpaca or sharegpt
format (:mod:`patentgpt.data.chat`), mixed by weight. Records that cannot be used are counted by
source and reason and written to ``RUN_DIR/rejects.jsonl``; nothing is dropped silently. With
``eval.holdout`` a seeded share of each source is held out and its assistant-only loss and
perplexity are reported per source and per language.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from patentgpt.data.chat import record_lang, to_messages
from patentgpt.data.chat_loader import PackedChatLoader, pack_eval_rows, tokenize_chat
from patentgpt.data.jsonl import read_json_records
from patentgpt.data.loader import holdout_split
from patentgpt.errors import DataError
from patentgpt.train.config import SFTConfig
from patentgpt.train.lm import CausalLMStage


def write_rejects(path: Path, rejects: list[dict]) -> None:
    from patentgpt.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))


def data_report_line(report: dict) -> str:
    return "; ".join(f"{name}: {r['kept']} of {r['read']} kept" + (
        f" (set aside: {', '.join(f'{k} {v}' for k, v in r['set_aside'].items())})" if r["set_aside"] else "")
        for name, r in report.items())


class SFTStage(CausalLMStage):
    name = "sft"

    def __init__(self, cfg: SFTConfig):
        super().__init__(cfg)
        self.train_sources: list = []
        self.data_report: dict = {}

    def _read_source(self, spec, tokenizer, rejects: list[dict]):
        """(tokenized conversations with their language, per-reason counts) of one source."""
        path = Path(spec.path)
        if not path.is_file():
            raise DataError(f"data.sources[{spec.name}].path: {path} not found")
        kept, reasons, read = [], Counter(), 0
        for line, record, reason in read_json_records(path):
            read += 1
            messages = None
            if reason is None:
                messages, reason = to_messages(record, spec.format)
            if reason is None:
                ids, labels, reason = tokenize_chat(tokenizer, messages)
            if reason is None and len(ids) > self.cfg.data.seq_len:
                reason = "longer_than_seq_len"
            if reason is not None:
                reasons[reason] += 1
                rejects.append({"source": spec.name, "file": str(path), "line": line, "reason": reason})
                continue
            kept.append((ids, labels, record_lang(record, messages)))
        return kept, read, reasons

    def setup(self, ctx):
        cfg = self.cfg
        tokenizer = self.load_tokenizer(cfg.data.tokenizer or cfg.model.init_from, ctx)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token to pad rows with")
        rejects: list[dict] = []
        for i, spec in enumerate(cfg.data.sources):
            kept, read, reasons = self._read_source(spec, tokenizer, rejects)
            self.data_report[spec.name] = {"read": read, "kept": len(kept), "set_aside": dict(reasons.most_common())}
            if not kept:
                raise DataError(f"data.sources[{spec.name}]: no usable conversation in {spec.path} "
                                f"(set aside: {dict(reasons.most_common(5))})")
            train_ids, held_ids = holdout_split(len(kept), cfg.eval.holdout, cfg.run.seed, i)
            self.train_sources.append((spec.name, [kept[j][:2] for j in train_ids], spec.weight))
            by_lang: dict = {}
            for j in held_ids:
                by_lang.setdefault(kept[j][2], []).append(kept[j][:2])
            for lang, examples in sorted(by_lang.items(), key=lambda kv: str(kv[0])):
                rows = pack_eval_rows(examples, cfg.data.seq_len, self.pad_id, ctx.micro * cfg.eval.max_batches)
                group = f"{spec.name}_{lang}" if lang and len(by_lang) > 1 else spec.name
                self.eval_groups[group] = [
                    {"input_ids": torch.from_numpy(np.stack([r[0] for r in rows[k:k + ctx.micro]])),
                     "labels": torch.from_numpy(np.stack([r[1] for r in rows[k:k + ctx.micro]])),
                     "position_ids": torch.from_numpy(np.stack([r[2] for r in rows[k:k + ctx.micro]]))}
                    for k in range(0, len(rows), ctx.micro)]
                self.eval_langs[group] = lang
        if ctx.rank == 0:
            write_rejects(ctx.run_dir / "rejects.jsonl", rejects)
            print(f"sft data: {data_report_line(self.data_report)}")

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
