"""The evaluation part of ``patentgpt demo``: each demo model on the patent-bar true/false set
(when ../shared/data is present) and the MOZIP-format fixtures, with a contamination report of
those items against the demo corpus and the token shards the demo trained on."""

from __future__ import annotations

from pathlib import Path

from patentgpt.eval.decontam import is_shard_set

DEMO_TASKS = ["ipquiz", "patent_agent_exam", "patentmatch", "ipqa", "patentbar_tf"]
CORPUS = Path(__file__).resolve().parents[1] / "assets" / "demo_corpus"


def demo_training_data(out: Path) -> list[Path]:
    """The demo corpus and every token shard set the demo pipeline wrote under ``out/../data``."""
    data = Path(out).parent / "data"
    shards = sorted(p.parent for p in data.rglob("meta.json") if is_shard_set(p.parent)) if data.is_dir() else []
    return [CORPUS, *shards]


def demo_eval(model_dirs: dict[str, Path], out: Path, limit: int = 100, against: list[Path] | None = None) -> dict:
    """Evaluate each named model directory; prints one table per model and returns
    ``{name: {"results": path, "table": path, "metrics": {task/metric: value}}}``."""
    from patentgpt.eval.harness import evaluate, flat_metrics
    from patentgpt.eval.report import markdown_table

    out = Path(out)
    sources = demo_training_data(out) if against is None else against
    summary = {}
    for name, model_dir in model_dirs.items():
        results = evaluate(Path(model_dir), DEMO_TASKS, out / name, limit=limit, contamination_sources=sources,
                           decontaminate=True, batch_size=64)
        print(markdown_table(results, title=f"{name} ({model_dir})"), flush=True)
        summary[name] = {"results": str(out / name / "results.json"), "table": str(out / name / "results.md"),
                         "png": str(out / name / "results.png"), "metrics": flat_metrics(results),
                         "skipped": results["skipped"], "seconds": results["seconds"]}
    return summary
