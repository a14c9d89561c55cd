"""The comparison a finished sweep writes (``patentgpt ablate``): one table and one PNG.

``RUNS/GROUP/comparison.md`` (and ``.json``): per run, the final and best held-out loss, training
tokens, training wall time (summed step times, evaluation excluded), tokens/s and, for MoE runs,
the worst max/mean expert load of the last logged step. ``comparison.png``: held-out loss against
training tokens and against training wall time, one line per run.
"""

from __future__ import annotations

from pathlib import Path

from patentgpt.io import atomic_write_json, atomic_write_text


def run_curves(records: list[dict]) -> dict:
    """Held-out loss points (step, tokens, wall seconds, loss) and totals of one run's metrics."""
    wall, tokens, last_tokens = {0: 0.0}, {0: 0}, 0
    elapsed = 0.0
    train = [r for r in records if "tokens_per_sec" in r and r.get("tokens_per_sec")]
    for r in train:
        seen = int(r["tokens_seen"])
        elapsed += (seen - last_tokens) / r["tokens_per_sec"]
        last_tokens = seen
        wall[r["step"]], tokens[r["step"]] = elapsed, seen
    points = []
    for r in records:
        if "val/loss" in r and r["step"] in wall:
            points.append({"step": r["step"], "tokens": tokens[r["step"]], "wall_s": wall[r["step"]],
                           "val_loss": r["val/loss"]})
    out = {"points": points, "tokens": last_tokens, "wall_s": elapsed,
           "tokens_per_sec": last_tokens / elapsed if elapsed else None,
           "final_train_loss": train[-1].get("lm_loss", train[-1]["loss"]) if train else None}
    if points:
        out["final_val_loss"] = points[-1]["val_loss"]
        out["best_val_loss"] = min(p["val_loss"] for p in points)
    imbalance = [r["expert_imbalance_max"] for r in train if "expert_imbalance_max" in r]
    if imbalance:
        out["expert_imbalance_max"] = imbalance[-1]
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def write_comparison(group_dir: Path, run_dirs: dict[str, Path]) -> dict:
    """Write comparison.{md,json,png} under ``group_dir`` for the runs that logged metrics."""
    from patentgpt.train.monitor import read_metrics

    results = {name: run_curves(read_metrics(d)) for name, d in run_dirs.items() if (d / "metrics.jsonl").is_file()}
    if not results:
        return {}
    group_dir.mkdir(parents=True, exist_ok=True)
    lines = ["| run | final val loss | best val loss | final train LM loss | tokens | train wall (s) | tokens/s | "
             "max/mean expert load |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {_fmt(r.get('final_val_loss'), '.4f')} | {_fmt(r.get('best_val_loss'), '.4f')} | "
                     f"{_fmt(r['final_train_loss'], '.4f')} | {r['tokens']:,} | {r['wall_s']:.1f} | "
                     f"{_fmt(r['tokens_per_sec'], ',.0f')} | {_fmt(r.get('expert_imbalance_max'), '.2f')} |")
    atomic_write_text(group_dir / "comparison.md", "\n".join(lines) + "\n")
    atomic_write_json(group_dir / "comparison.json", results)
    _plot(results, group_dir / "comparison.png")
    return results


def _plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, r in results.items():
        pts = r["points"]
        if not pts:
            continue
        a.plot([p["tokens"] for p in pts], [p["val_loss"] for p in pts], "o-", label=name)
        b.plot([p["wall_s"] for p in pts], [p["val_loss"] for p in pts], "o-", label=name)
    a.set_xlabel("training tokens")
    a.set_ylabel("held-out loss")
    b.set_xlabel("training wall time (s, evaluation excluded)")
    a.legend(fontsize=8)
    a.set_title("held-out loss vs tokens")
    b.set_title("held-out loss vs wall time")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def print_table(group_dir: Path) -> None:
    path = group_dir / "comparison.md"
    if path.is_file():
        print(path.read_text(), end="")
        print(f"comparison: {path} and {path.with_suffix('.png')}")

