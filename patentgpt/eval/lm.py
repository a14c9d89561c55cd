"""The model side of the harness: lm-eval's HF adapter with a prefix-sharing log-likelihood.

lm-eval's ``HFLM`` scores each (context, continuation) pair as its own sequence, so a
multiple-choice question with four option texts runs its (long) context four times; it only
shares work when every continuation is a single token. :class:`PatentLM` keeps everything
of ``HFLM`` (tokenisation, generation, truncation rules) and replaces the log-likelihood loop:
requests are grouped by context, each context runs once (batched across questions, left-padded)
and its key/value cache is reused for all of that question's continuations. Token sequences are
exactly HFLM's, so scores match its scores (to float rounding, see bench/eval_throughput.py).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

DEFAULT_BATCH = 32


class PatentLM(HFLM):
    """``HFLM`` over a loaded model (or an HF directory) with context-shared scoring."""

    def __init__(self, model, tokenizer=None, batch_size: int = DEFAULT_BATCH, max_length: int | None = None,
                 device: str | None = None):
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model)
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        device = device or str(next(model.parameters()).device)  # an in-memory model stays where it is
        model.eval().to(device)
        # transformers 5.x renamed the forward's past_key_values to cache
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                         device=device)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        groups: dict[tuple, list[int]] = defaultdict(list)
        fallback: list[int] = []
        for i, (_, ctx, cont) in enumerate(requests):
            if len(ctx) + len(cont) > self.max_length + 1 or not ctx:
                fallback.append(i)  # HFLM's left truncation applies: let it score these
            else:
                groups[tuple(ctx)].append(i)
        results: list = [None] * len(requests)
        if fallback:
            for i, r in zip(fallback, super()._loglikelihood_tokens([requests[i] for i in fallback], True)):
                results[i] = r
        order = sorted(groups, key=lambda c: (-len(c), c))
        bs = self.batch_size if isinstance(self.batch_size, int) and self.batch_size > 0 else DEFAULT_BATCH
        pbar = tqdm(total=len(requests) - len(fallback), disable=disable_tqdm or self.rank != 0,
                    desc="Scoring choices (shared contexts)")
        for start in range(0, len(order), bs):
            batch = order[start:start + bs]
            for c, scored in zip(batch, self._score_batch(batch, [[requests[j][2] for j in groups[c]] for c in batch])):
                for j, r in zip(groups[c], scored):
                    results[j] = r
                    self.cache_hook.add_partial("loglikelihood", requests[j][0], r)
                pbar.update(len(scored))
        pbar.close()
        return results

    def _score_batch(self, contexts: list[tuple], conts: list[list[list[int]]]) -> list[list[tuple[float, bool]]]:
        dev = self.device
        lc = max(len(c) for c in contexts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(contexts), lc), pad, dtype=torch.long)
        mask = torch.zeros((len(contexts), lc), dtype=torch.long)
        for b, c in enumerate(contexts):
            ids[b, lc - len(c):] = torch.tensor(c)
            mask[b, lc - len(c):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        first = F.log_softmax(out.logits[:, -1, : self.vocab_size].float(), dim=-1)  # predicts cont[0]
        # continuations longer than one token: run cont[:-1] on the shared cache, one row each
        rows = [(b, k) for b, cs in enumerate(conts) for k, cont in enumerate(cs) if len(cont) > 1]
        rest = {}
        if rows:
            lk = max(len(conts[b][k]) - 1 for b, k in rows)
            idx = torch.tensor([b for b, _ in rows], device=dev)
            cache = getattr(out, "cache", None) or out.past_key_values
            cache.batch_select_indices(idx)
            cids = torch.full((len(rows), lk), pad, dtype=torch.long)
            cmask = torch.zeros((len(rows), lk), dtype=torch.long)
            for r, (b, k) in enumerate(rows):
                toks = conts[b][k][:-1]
                cids[r, : len(toks)] = torch.tensor(toks)
                cmask[r, : len(toks)] = 1
            cids, cmask = cids.to(dev), cmask.to(dev)
            full_mask = torch.cat([mask[idx], cmask], dim=1)
            cpos = mask[idx].sum(-1, keepdim=True) + torch.arange(lk, device=dev)
            logits = self.model(input_ids=cids, attention_mask=full_mask, position_ids=cpos,
                                use_cache=True, **{self._cache_kw: cache}).logits
            logp = F.log_softmax(logits[..., : self.vocab_size].float(), dim=-1)
            for r, (b, k) in enumerate(rows):
                rest[(b, k)] = logp[r, : len(conts[b][k]) - 1]
        scored = []
        for b, cs in enumerate(conts):
            res = []
            for k, cont in enumerate(cs):
                steps = first[b:b + 1] if len(cont) == 1 else torch.cat([first[b:b + 1], rest[(b, k)]], dim=0)
                target = torch.tensor(cont, device=dev)
                lp = steps.gather(1, target[:, None]).squeeze(1)
                res.append((float(lp.sum()), bool((steps.argmax(-1) == target).all())))
            scored.append(res)
        return scored
