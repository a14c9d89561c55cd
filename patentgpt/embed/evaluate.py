"""``patentgpt embed eval``: every task on every model, one report directory per task plus a summary."""

from __future__ import annotations

from pathlib import Path

from patentgpt.embed.report import summary_markdown, write_task_report
from patentgpt.embed.taskdef import TaskConfig


def evaluate(models: dict[str, dict], tasks: list[TaskConfig], out: str | Path, *, batch_size: int = 32,
             dim: int | None = None, log=print) -> dict[str, dict[str, dict]]:
    """``models``: label -> {"model_dir": ..., "pooling": ..., "max_length": ...}. Returns task -> label -> result."""
    from patentgpt.embed.extract import load_scorer
    from patentgpt.embed.tasks import run_task
    from patentgpt.io import atomic_write_json, atomic_write_text

    out = Path(out)
    summary: dict[str, dict[str, dict]] = {t.name: {} for t in tasks}
    for label, spec in models.items():
        embedder = load_scorer(spec.get("model_dir"), pooling=spec.get("pooling"), max_length=spec.get("max_length"))
        for task in tasks:
            res = run_task(task, embedder, batch_size=batch_size, dim=dim)
            summary[task.name][label] = res
            head = ", ".join(f"{k} {v:.4f}" for k, v in (res.get("headline") or {}).items()) or res.get("reason")
            log(f"{task.name:28s} {label:20s} {head}")
    for task in tasks:
        write_task_report(out, task.name, summary[task.name])
    slim = {t: {m: {k: v for k, v in r.items() if k != "rejects"} for m, r in per.items()} for t, per in summary.items()}
    atomic_write_json(out / "summary.json", slim)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary
