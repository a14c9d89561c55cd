"""The embedding step of ``patentgpt demo``: MiniLM and the demo decoder on the demo-corpus tasks."""

from __future__ import annotations

import time
from pathlib import Path

DEMO_TASKS = ("demo_classification", "demo_retrieval")


def demo_embed(model_dirs: dict[str, Path], out: Path) -> dict:
    """Embed the demo corpus with all-MiniLM-L6-v2 and with each of ``model_dirs`` (label -> HF dir,
    e.g. the pretraining export, pooled by its last token); print classification F1 and retrieval
    nDCG@10 of each; reports go to ``out``."""
    from patentgpt.embed.evaluate import evaluate
    from patentgpt.embed.taskdef import find_tasks, load_task

    print("== embeddings: all-MiniLM-L6-v2 and the demo model on demo-corpus tasks", flush=True)
    t0 = time.time()
    # 128 tokens cover a title + abstract of the demo corpus in English; it keeps the step under a minute
    models = {"all-MiniLM-L6-v2": {"model_dir": None, "max_length": 128}} | {
        label: {"model_dir": d, "max_length": 128} for label, d in model_dirs.items()}
    tasks = [load_task(p) for p in find_tasks(list(DEMO_TASKS))]
    summary = evaluate(models, tasks, out, log=lambda *_: None)
    cls, ret = summary["demo_classification"], summary["demo_retrieval"]
    report = {label: {"classification_micro_f1": cls[label]["headline"]["micro_f1"],
                      "classification_macro_f1": cls[label]["headline"]["macro_f1"],
                      "retrieval_ndcg@10": ret[label]["headline"]["ndcg@10"]} for label in models}
    for label, vals in report.items():
        print(f"  {label:24s} IPC-section F1 micro {vals['classification_micro_f1']:.3f} "
              f"macro {vals['classification_macro_f1']:.3f}   title->abstract nDCG@10 {vals['retrieval_ndcg@10']:.3f}")
    return {"out": str(out), "models": report, "seconds": round(time.time() - t0, 1)}
