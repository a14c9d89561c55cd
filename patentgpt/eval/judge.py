"""Optional pairwise judge for open questions: any local HF (chat) model picks the better answer.

Each (candidate, reference) pair is shown twice, the candidate first and then second, and the
judge's preference is read from the log-probabilities of the answers' labels ("1"/"2") as its
next token. Winning both orders is a win (1), losing both a loss (0), a split is a tie (0.5):
a judge that always prefers the first position scores every item 0.5, so position bias cancels.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROMPT = {
    "en": "Question: {q}\n\nAnswer 1: {a}\n\nAnswer 2: {b}\n\nWhich answer is more accurate and helpful? "
          "Reply with 1 or 2.",
    "zh": "问题：{q}\n\n回答1：{a}\n\n回答2：{b}\n\n哪个回答更准确、更有帮助？请回复1或2。",
}


class PairwiseJudge:
    def __init__(self, model_dir: str | Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.labels = [self.tok.encode(x, add_special_tokens=False)[-1] for x in ("1", "2")]

    def _text(self, question: str, a: str, b: str, lang: str) -> str:
        body = PROMPT.get(lang, PROMPT["en"]).format(q=question, a=a, b=b)
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                add_generation_prompt=True)
        return body + "\nBetter answer:"

    @torch.no_grad()
    def prefers_first(self, question: str, a: str, b: str, lang: str) -> bool:
        ids = self.tok(self._text(question, a, b, lang), return_tensors="pt")
        logits = self.model(**ids).logits[0, -1]
        return bool(logits[self.labels[0]] >= logits[self.labels[1]])

    def score(self, question: str, candidate: str, reference: str, lang: str = "en") -> float:
        """1 win, 0.5 tie, 0 loss of ``candidate`` against ``reference``."""
        first = self.prefers_first(question, candidate, reference, lang)
        second = not self.prefers_first(question, reference, candidate, lang)
        return (first + second) / 2
