"""Eval reports: ``results.json``, ``results.md`` (a table), ``results.png``, ``outcomes.jsonl``; W&B."""

from __future__ import annotations

import os
from pathlib import Path

from patentgpt.io import atomic_open, atomic_write_json, atomic_write_text

HEADLINE = ("acc", "acc_norm", "exact_match", "partial", "exam_score", "rouge_l", "chrf", "judge_win_rate")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.1f}" if isinstance(value, float) and abs(value) > 1.5 else \
        f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(results: dict, title: str | None = None) -> str:
    rows = results["tasks"]
    cols = [m for m in HEADLINE if any(m in e["metrics"] for e in rows.values())]
    extra = ["contaminated_share"] if any("contaminated_share" in e["metrics"] for e in rows.values()) else []
    clean = any("clean_metrics" in e for e in rows.values())
    head = ["task", "n", *cols, *extra, *(["clean n", "clean acc"] if clean else [])]
    lines = [f"### {title}" if title else f"### {results['model']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in rows.items():
        m = e["metrics"]
        cells = [name, str(m.get("n", "")), *(_fmt(m.get(c)) for c in cols), *(_fmt(m.get(c)) for c in extra)]
        if clean:
            cm = e.get("clean_metrics") or {}
            cells += [str(cm.get("n", "")), _fmt(cm.get("acc", cm.get("rouge_l")))]
        lines.append("| " + " | ".join(cells) + " |")
    for name, why in results.get("skipped", {}).items():
        lines.append(f"\nskipped {name}: {why}")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values, labels = [], [], []
    for name, e in results["tasks"].items():
        m = e["metrics"]
        key = next((k for k in ("acc", "rouge_l", "exact_match") if k in m), None)
        if key is None:
            continue
        names.append(name)
        values.append(m[key])
        labels.append(key)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 4.2))
    bars = ax.bar(range(len(names)), values, color="#4472c4")
    for bar, name, value in zip(bars, names, values):
        share = results["tasks"][name]["metrics"].get("contaminated_share")
        note = f"{value:.2f}" + (f"\n{share:.0%} cont." if share else "")
        if share:
            bar.set_hatch("//")
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.02, note, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), [f"{n} ({lab})" for n, lab in zip(names, labels)], fontsize=7,
                  rotation=30, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    model = "/".join(Path(str(results["model"])).parts[-2:])
    ax.set_title(f"{model}: eval scores (hatched: some items found in training data)", fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def write_report(results: dict, out_dir: Path) -> dict[str, str]:
    from patentgpt.eval.harness import outcomes_jsonl

    out_dir = Path(out_dir)
    summary = {k: v for k, v in results.items() if k != "tasks"}
    summary["tasks"] = {n: {k: v for k, v in e.items() if k != "outcomes"} for n, e in results["tasks"].items()}
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "png": out_dir / "results.png",
             "outcomes": out_dir / "outcomes.jsonl"}
    atomic_write_json(paths["json"], summary)
    atomic_write_text(paths["markdown"], markdown_table(results))
    atomic_write_text(paths["outcomes"], outcomes_jsonl(results))
    if results["tasks"]:
        plot(results, paths["png"])
    else:
        paths.pop("png")
    return {k: str(v) for k, v in paths.items()}


def log_wandb(results: dict, flat: dict[str, float], out_dir: Path, mode: str = "auto",
              project: str = "patentgpt") -> None:
    """Scores, the table and the PNG to W&B; W&B trouble is reported, never fatal."""
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    if mode == "disabled":
        return
    try:
        import wandb

        run = wandb.init(project=project, job_type="eval", dir=str(out_dir), mode=mode,
                         config={"model": results["model"], "limit": results["limit"], "ngram": results["ngram"]})
        run.log({f"eval/{k}": v for k, v in flat.items()})
        png = Path(out_dir) / "results.png"
        if png.is_file():
            run.log({"eval/scores": wandb.Image(str(png))})
        run.finish()
    except Exception as exc:  # noqa: BLE001 - logging must not lose the results already written
        print(f"eval: W&B logging failed ({type(exc).__name__}: {exc}); results are in {out_dir}")
