"""Task results as JSON + markdown + PNG, one directory per task, published atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from patentgpt.embed.extract import stage_dir


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}" if isinstance(v, float) else str(v)


def rows(result: dict) -> list[tuple[str, dict]]:
    """(row name, metrics) of one result; retrieval gives one row per ranking and query subset."""
    m = result.get("metrics") or {}
    if result.get("kind") == "retrieval":
        return [(f"{ranking} / {sub}", vals) for ranking, subs in m.items() for sub, vals in subs.items()]
    members = [(f"member {x['model']} ({x['task']})", {k: x.get(k) for k in m}) for x in result.get("members", [])]
    head = "blended" if "blend" in result else "ensemble" if members else ""
    before = [("before blend", result["before_blend"])] if "blend" in result else []
    return [(head, m), *before, *members]


def markdown(task: str, results: dict[str, dict]) -> str:
    lines = [f"# {task}", ""]
    for label, res in results.items():
        lines.append(f"## {label}")
        if res.get("status") != "ok":
            lines += [f"skipped: {res.get('reason')}", ""]
            continue
        table = rows(res)
        keys = list(table[0][1])
        lines += ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_fmt(vals.get(k)) for k in keys) + " |" for name, vals in table]
        lines += ["", f"model `{res['model']}`, pooling {res['pooling']}, dim {res['dim'] or 'full'}, "
                      f"{len(res.get('rejects') or [])} records set aside, {res['seconds']} s", ""]
        if "blend" in res:
            b = res["blend"]
            terms = " + ".join(f"{c:.4f} x {n}" for c, n in zip(b["coef"], b["features"]))
            lines += [f"blend fitted on {b['dev_pairs']} dev pairs: {b['intercept']:.4f} + {terms} "
                      f"(dev Pearson {b['dev_pearson_before']:.4f} before, {b['dev_pearson_fitted']:.4f} fitted)", ""]
    return "\n".join(lines)


def plot(task: str, results: dict[str, dict], path: Path) -> None:
    """Grouped bars: one group per headline metric (retrieval: nDCG@10 of each ranking), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {k: r for k, r in results.items() if r.get("status") == "ok"}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    groups = []
    for label, res in ok.items():
        vals = ({f"nDCG@10 {rk}": subs["all"]["ndcg@10"] for rk, subs in res["metrics"].items()}
                if res["kind"] == "retrieval" else res["headline"])
        groups.append((label, vals))
    names = list(groups[0][1]) if groups else []
    width = 0.8 / max(len(groups), 1)
    for j, (label, vals) in enumerate(groups):
        ax.bar([i + j * width for i in range(len(names))], [vals[n] for n in names], width, label=label)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    ax.set_title(task)
    ax.set_ylim(0, 1)
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_task_report(out_dir: Path, task: str, results: dict[str, dict]) -> Path:
    from patentgpt.io import publish_dir

    final = Path(out_dir) / task
    stage = stage_dir(final)
    (stage / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (stage / "results.md").write_text(markdown(task, results), encoding="utf-8")
    plot(task, results, stage / "results.png")
    publish_dir(stage, final)
    return final


def summary_markdown(summary: dict[str, dict[str, dict]]) -> str:
    lines = ["| task | model | status | headline |", "|---|---|---|---|"]
    for task, per_model in summary.items():
        for label, res in per_model.items():
            head = ", ".join(f"{k} {_fmt(v)}" for k, v in (res.get("headline") or {}).items()) or res.get("reason", "")
            lines.append(f"| {task} | {label} | {res['status']} | {head} |")
    return "\n".join(lines) + "\n"
