"""PNG pictures of a run: the loss curve (MoE expert load: patentgpt.model.routing)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(records: list[dict], out: Path) -> Path | None:
    rows = [r for r in records if "loss" in r]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="training loss")
    val = [r for r in records if "val/loss" in r]
    if val:  # held-out loss (eval.holdout), at step 0, every eval.every_steps and at the end
        ax.plot([r["step"] for r in val], [r["val/loss"] for r in val], "o-", color="tab:green", label="held-out loss")
    ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:orange", alpha=0.3, label="lr")
    ax2.set_ylabel("learning rate")
    ax.set_title("loss: training steps and held-out split")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
