"""Per-item outcomes from lm-eval's logged samples, and the metrics built on them.

lm-eval gives ``acc`` / ``acc_norm`` (or ``exact_match``) per document; from its logged
log-likelihoods (or generations) we also read the predicted option set, which the
exam metrics need:

* all-or-nothing (``acc``): the predicted set equals the gold set;
* partial credit: a predicted set inside the gold set earns |pred| / |gold|, any wrong option 0
  (the usual rule of multi-answer exam questions; ``exam.partial_credit: false`` turns it off);
* exam score: points earned over points available, times 100, against the task's pass mark.

Open questions are scored against their reference by ROUGE-L (LCS F-measure over words, or over
characters for Chinese) and chrF (sacrebleu).
"""

from __future__ import annotations

import re

from patentgpt.eval.decontam import text_units
from patentgpt.eval.tasks import LETTERS, TaskSpec



def partial_credit(pred: set[int], gold: set[int]) -> float:
    if not pred or not pred <= gold:
        return 0.0
    return len(pred) / len(gold)


def exam_score(credits: list[float], points: list[float]) -> float:
    total = sum(points)
    return 100.0 * sum(c * p for c, p in zip(credits, points)) / total if total else 0.0


def extract_letters(text: str, n_options: int, multi: bool) -> set[int]:
    """The option letters a generated answer names (first run of capitals, e.g. 'ACD' or 'B')."""
    valid = LETTERS[:n_options]
    match = re.search(rf"\b([{valid}](?:[\s,、和与]*[{valid}])*)\b", text.strip())
    if not match:
        return set()
    picked = {valid.index(c) for c in match.group(1) if c in valid}
    return picked if multi or len(picked) == 1 else set()


def extract_label(text: str, labels: list[str]) -> int | None:
    """Index of the first answer word (e.g. True/False, 正确/错误) in a generated answer."""
    hits = [(m.start(), i) for i, lab in enumerate(labels)
            for m in [re.search(re.escape(lab), text, flags=re.I)] if m]
    return min(hits)[1] if hits else None


def rouge_l(pred: str, ref: str) -> float:
    a, b = text_units(pred), text_units(ref)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def chrf(pred: str, ref: str) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(pred, [ref]).score / 100.0


def item_outcome(spec: TaskSpec, sample: dict) -> dict:
    """One logged lm-eval sample -> {id, correct, correct_norm, partial, points, pred, output}."""
    doc = sample["doc"]
    out = {"id": doc["id"], "points": float(doc.get("points", 1.0))}
    if spec.type == "open":
        text = _first(sample["filtered_resps"])
        out.update(output=text, rouge_l=rouge_l(text, doc["reference"]),
                   chrf=chrf(text, doc["reference"]))
        return out
    gold = set(doc["gold"])
    if spec.mode == "loglikelihood":
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        best = max(range(len(lls)), key=lls.__getitem__)
        out["correct"] = float(sample["acc"])
        out["correct_norm"] = float(sample["acc_norm"])
        choice = doc["choices"][best]
        pred = {LETTERS.index(c) for c in choice} if spec.type == "multi_answer" else {best}
    else:
        text = _first(sample["resps"])
        if spec.type == "true_false":
            idx = extract_label(text, doc["options"])
            pred = set() if idx is None else {idx}
        else:
            pred = extract_letters(text, len(doc["options"]), spec.type == "multi_answer")
        out["correct"] = float(pred == gold)
        out["exact_match"] = float(sample.get("exact_match", out["correct"]))
        out["output"] = text
    out["pred"] = sorted(pred)
    use_partial = spec.exam.partial_credit if spec.exam else True
    out["partial"] = partial_credit(pred, gold) if use_partial else float(pred == gold)
    return out


def _first(resps):
    while isinstance(resps, (list, tuple)):
        resps = resps[0] if resps else ""
    return str(resps)


def summarize(spec: TaskSpec, outcomes: list[dict]) -> dict[str, float]:
    """Task metrics over item outcomes (all items, or only the clean ones)."""
    n = len(outcomes)
    if not n:
        return {"n": 0}
    mean = lambda key: sum(o[key] for o in outcomes) / n  # noqa: E731
    metrics: dict[str, float] = {"n": n}
    if spec.type == "open":
        metrics["rouge_l"], metrics["chrf"] = mean("rouge_l"), mean("chrf")
        if all("judge" in o for o in outcomes):
            metrics["judge_win_rate"] = mean("judge")
        return _listed(spec, metrics)
    metrics["acc"] = mean("correct")
    if "correct_norm" in outcomes[0]:
        metrics["acc_norm"] = mean("correct_norm")
    if "exact_match" in outcomes[0]:
        metrics["exact_match"] = mean("exact_match")
    if spec.type == "multi_answer" or "partial" in spec.metrics:
        metrics["partial"] = mean("partial")
    if spec.exam is not None:
        credits = [o["partial"] if spec.exam.partial_credit else o["correct"] for o in outcomes]
        metrics["exam_score"] = exam_score(credits, [o["points"] for o in outcomes])
        metrics["exam_pass"] = float(metrics["exam_score"] >= spec.exam.pass_mark)
    return _listed(spec, metrics)


def _listed(spec: TaskSpec, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics the task file lists (plus n, and exam_pass beside exam_score)."""
    keep = {"n", *spec.metrics, *(["exam_pass"] if "exam_score" in spec.metrics else [])}
    return {k: v for k, v in metrics.items() if k in keep}
