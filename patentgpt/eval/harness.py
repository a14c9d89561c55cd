"""Run task files through lm-eval and turn its logged samples into our metrics and reports.

:func:`evaluate` is what ``patentgpt eval`` runs; :func:`run_eval_suite` is the small entry point
for evaluation during training (flat ``task/metric`` names, ready for a metrics logger).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import Field, field_validator

from patentgpt.config import Section
from patentgpt.eval.bridge import write_lm_eval_tasks
from patentgpt.eval.scoring import item_outcome, summarize
from patentgpt.eval.tasks import load_task, resolve_task

SEED = 1234


def _make_lm(model, tokenizer, batch_size: int):
    from lm_eval.api.model import LM

    from patentgpt.eval.lm import PatentLM

    return model if isinstance(model, LM) else PatentLM(model, tokenizer, batch_size=batch_size)


def evaluate(model, tasks: list[str], out_dir: str | Path, *, tokenizer=None, limit: int | None = None,
             batch_size: int = 32, contamination_sources: list[str | Path] = (), ngram: int = 13,
             decontaminate: bool = False, judge: str | Path | None = None, write: bool = True) -> dict:
    """Evaluate ``model`` (an HF directory, a loaded model with ``tokenizer``, or any lm-eval ``LM``)
    on the named tasks; writes results.json, results.md, results.png and per-item outcomes."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    t0 = time.time()
    out_dir = Path(out_dir)
    loaded = [load_task(name) for name in tasks]
    skipped = {t.spec.name: t.skipped for t in loaded if t.skipped}
    for name, why in skipped.items():
        print(f"eval: skipping {name}: {why}", flush=True)
    lm_dir = out_dir / "lm_eval"
    prepared = write_lm_eval_tasks(loaded, lm_dir, limit=limit)
    results: dict = {"model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
                     "limit": limit, "ngram": ngram, "tasks": {}, "skipped": skipped,
                     "rejected": {t.spec.name: dict(t.rejected) for t in loaded if t.rejected}}
    if prepared:
        lm = _make_lm(model, tokenizer, batch_size)
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        raw = simple_evaluate(model=lm, tasks=list(prepared), limit=limit, log_samples=True, bootstrap_iters=0,
                              task_manager=TaskManager(include_path=str(lm_dir / "tasks"), include_defaults=False),
                              random_seed=SEED, numpy_random_seed=SEED, torch_random_seed=SEED,
                              fewshot_random_seed=SEED)
        judge_model = None
        if judge:
            from patentgpt.eval.judge import PairwiseJudge

            judge_model = PairwiseJudge(judge)
        for name, info in prepared.items():
            spec = info["spec"]
            samples = sorted(raw["samples"][name], key=lambda s: int(s["doc_id"]))
            outcomes = [item_outcome(spec, s) for s in samples]
            if judge_model is not None and spec.type == "open":
                for o, s in zip(outcomes, samples):
                    o["judge"] = judge_model.score(s["doc"]["question"], o["output"], s["doc"]["reference"],
                                                   info["lang"])
            lm_eval_numbers = {k.split(",")[0]: v for k, v in raw["results"][name].items()
                               if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len"}
            results["tasks"][name] = {"task": spec.name, "lang": info["lang"], "type": spec.type,
                                      "metrics": summarize(spec, outcomes), "lm_eval": lm_eval_numbers,
                                      "outcomes": outcomes}
        if contamination_sources:
            add_contamination(results, prepared, contamination_sources, ngram, decontaminate,
                              tokenizer=getattr(lm, "tokenizer", tokenizer))
    results["seconds"] = round(time.time() - t0, 2)
    if write:
        from patentgpt.eval.report import write_report

        write_report(results, out_dir)
    return results


def add_contamination(results: dict, prepared: dict, sources, ngram: int, decontaminate: bool, tokenizer=None):
    from patentgpt.eval.decontam import contamination

    evaluated = {name: [d for d in info["docs"] if d["id"] in {o["id"] for o in results["tasks"][name]["outcomes"]}]
                 for name, info in prepared.items()}
    report = contamination(evaluated, [Path(s) for s in sources], n=ngram, tokenizer=tokenizer)
    results["contamination_sources"] = report["_sources"]
    for name, info in prepared.items():
        entry = results["tasks"][name]
        entry["contamination"] = report[name]
        entry["metrics"]["contaminated_share"] = report[name]["share"]
        if decontaminate:
            dirty = set(report[name]["contaminated"])
            entry["clean_metrics"] = summarize(info["spec"], [o for o in entry["outcomes"] if o["id"] not in dirty])


def flat_metrics(results: dict) -> dict[str, float]:
    """``{"ipquiz_en/acc": 0.5, ...}`` (plus ``/clean`` variants when decontaminated)."""
    flat = {}
    for name, entry in results["tasks"].items():
        for key, value in entry["metrics"].items():
            flat[f"{name}/{key}"] = float(value)
        for key, value in (entry.get("clean_metrics") or {}).items():
            flat[f"{name}/clean_{key}"] = float(value)
    return flat


class EvalDuringTraining(Section):
    """Stage option for the training core: run ``tasks`` every ``every_steps`` and at the end,
    with :func:`run_eval_suite`, and log the flat scores beside the loss."""

    tasks: list[str] = Field(default_factory=list, description="eval task names (evals/**/NAME.yaml)")
    every_steps: int | None = Field(None, ge=1)
    at_end: bool = True
    limit: int | None = Field(100, ge=1, description="items per task and language (keeps the pause short)")

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            resolve_task(name)
        return v

    def due(self, step: int, last: bool = False) -> bool:
        if not self.tasks:
            return False
        return (last and self.at_end) or (self.every_steps is not None and step > 0 and step % self.every_steps == 0)


def run_eval_suite(model_dir_or_model, tokenizer=None, tasks: list[str] = (), limit: int | None = None,
                   out_dir: str | Path | None = None) -> dict[str, float]:
    """Evaluation during training: run ``tasks`` on a model (directory or in-memory model plus its
    tokenizer) and return flat metrics (``ipquiz_en/acc``...). The model is put back in training
    mode if it was in it. Writes the full report under ``out_dir`` when given."""
    import tempfile

    was_training = getattr(model_dir_or_model, "training", False)
    try:
        if out_dir is None:
            with tempfile.TemporaryDirectory(prefix="patentgpt-eval-") as tmp:
                res = evaluate(model_dir_or_model, list(tasks), tmp, tokenizer=tokenizer, limit=limit, write=False)
        else:
            res = evaluate(model_dir_or_model, list(tasks), out_dir, tokenizer=tokenizer, limit=limit)
    finally:
        if was_training:
            model_dir_or_model.train()
    return flat_metrics(res)


def outcomes_jsonl(results: dict) -> str:
    return "".join(json.dumps({"task": name, **o}, ensure_ascii=False) + "\n"
                   for name, entry in results["tasks"].items() for o in entry["outcomes"])
