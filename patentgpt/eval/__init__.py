"""Evaluation harness behind ``patentgpt eval``: task files (evals/), lm-eval bridge, scoring,
decontamination, reports. ``run_eval_suite`` is the entry point for evaluation during training."""

from patentgpt.eval.harness import EvalDuringTraining, evaluate, flat_metrics, run_eval_suite

__all__ = ["EvalDuringTraining", "evaluate", "flat_metrics", "run_eval_suite"]
