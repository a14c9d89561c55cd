"""PNG pictures of a run: loss curve and MoE expert load."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def plot_expert_load(fractions: np.ndarray, out: Path) -> Path:
    """``fractions[layer, expert]``: share of routed tokens each expert received."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1 + 0.6 * fractions.shape[1], 1 + 0.5 * fractions.shape[0]))
    im = ax.imshow(fractions, cmap="viridis", aspect="auto")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title("expert load (share of routed tokens)")
    for (i, j), v in np.ndenumerate(fractions):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
