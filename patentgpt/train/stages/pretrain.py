"""Continued pretraining: a weighted mixture of token shards, packed into fixed-length sequences."""

from __future__ import annotations

from pathlib import Path


from patentgpt.data.lang import detect_lang
from patentgpt.data.loader import MixtureLoader, holdout_split, pack_documents
from patentgpt.data.shards import ShardError, ShardSet, TokenizerInfo
from patentgpt.train.config import PretrainConfig
from patentgpt.train.lm import CausalLMStage, micro_batches
from patentgpt.train.stages.records import group_name


class PretrainStage(CausalLMStage):
    name = "pretrain"

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.sources: list[tuple[str, ShardSet, float]] = []
        self.train_docs: dict = {}

    def setup(self, ctx):
        cfg = self.cfg
        tokenizer = self.load_tokenizer(cfg.data.tokenizer, ctx)
        self.tok_info = TokenizerInfo.from_tokenizer(tokenizer, name=Path(cfg.data.tokenizer).name)
        if self.tok_info.eos_id is None:
            raise ShardError(f"tokenizer {cfg.data.tokenizer} has no EOS token; packing needs one")
        for i, spec in enumerate(cfg.data.sources):
            shards = ShardSet(spec.path)
            shards.check_tokenizer(self.tok_info, None)
            self.sources.append((spec.name, shards, spec.weight))
            train, held = holdout_split(len(shards), cfg.eval.holdout, cfg.run.seed, i)
            if len(held):
                self.train_docs[spec.name] = train
                self._add_eval_groups(spec.name, shards, held, ctx)

    def _add_eval_groups(self, name: str, shards: ShardSet, held, ctx) -> None:
        """Held-out documents of a source, grouped by language, as validation micro-batches."""
        by_lang: dict[str | None, list] = {}
        for d in held:
            doc = shards.doc(int(d))
            by_lang.setdefault(detect_lang(ctx.tokenizer.decode(doc[:512].tolist())), []).append(doc)
        bos = self.tok_info.bos_id if self.cfg.data.add_bos else None
        for lang, docs in sorted(by_lang.items(), key=lambda kv: str(kv[0])):
            columns = pack_documents(docs, self.cfg.data.seq_len, ctx.micro * self.cfg.eval.max_batches,
                                     eos_id=self.tok_info.eos_id, bos_id=bos,
                                     document_masking=self.cfg.data.document_masking)
            group = group_name(name, lang, len(by_lang))
            self.eval_groups[group] = micro_batches(columns, ctx.micro)
            self.eval_langs[group] = lang

    def build_model(self, ctx):
        model = super().build_model(ctx)
        for _, shards, _ in self.sources:
            shards.check_tokenizer(self.tok_info, model.config.vocab_size)
        return model

    def make_loader(self, ctx):
        cfg = self.cfg
        self.loader = MixtureLoader(self.sources, seq_len=cfg.data.seq_len, micro_batch_size=ctx.micro,
                                    grad_accum_steps=ctx.accum, world_size=ctx.world, rank=ctx.rank,
                                    seed=cfg.run.seed, eos_id=self.tok_info.eos_id,
                                    bos_id=self.tok_info.bos_id if cfg.data.add_bos else None,
                                    train_docs=self.train_docs, document_masking=cfg.data.document_masking)
        return self.loader

    def probe(self):
        batch = self.loader.next_step()[0]
        return {k: v[:1] for k, v in batch.items() if k != "labels"}  # with position_ids under document masking

