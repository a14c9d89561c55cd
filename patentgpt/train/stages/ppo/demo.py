"""The PPO step of ``patentgpt demo``: a few iterations on the demo SFT export against the demo
reward model (critic started from it), prompts from the synthesized IP instructions."""

from __future__ import annotations

from pathlib import Path

PPO_CONFIG = Path(__file__).resolve().parents[4] / "configs" / "ppo" / "demo.yaml"


def run_ppo_demo(out: Path, sft_export: str, rm_export: str, synth_file: Path, overrides: list[str]) -> dict:
    """Train configs/ppo/demo.yaml; returns the report section (reward and KL before / after)."""
    from patentgpt.config import load_config
    from patentgpt.train.config import PPOConfig
    from patentgpt.train.monitor import read_metrics
    from patentgpt.train.stages import run_stage

    print("== 7/9 PPO: the SFT model against the reward model (KL-penalised)", flush=True)
    cfg = load_config(PPOConfig, PPO_CONFIG, [
        f"model.init_from={sft_export}", f"ppo.reward_model={rm_export}", f"ppo.critic_from={rm_export}",
        f"data.sources=[{{name: ip_prompts, path: {synth_file}}}]", f"run.output_dir={out / 'runs'}",
        "checkpoint.resume=never", *overrides])
    summary = run_stage("ppo", cfg)
    rows = [r for r in read_metrics(summary["run_dir"]) if "reward_mean" in r]
    evals = [e for _, e in summary["evals"] if "val/reward" in e]
    run_dir = Path(summary["run_dir"])
    return {
        "run_dir": summary["run_dir"], "export": summary.get("export_dir"), "critic_export": summary.get("export_critic_dir"),
        "iterations": rows[-1]["iteration"] if rows else 0,
        # the reward model's raw score (the PPO reward normalises it with running moments)
        "reward": {"before": rows[0].get("rm_score_mean", rows[0]["reward_mean"]),
                   "after": rows[-1].get("rm_score_mean", rows[-1]["reward_mean"]),
                   # one rollout's standard error (its responses' spread / sqrt(rollout_batch_size))
                   "sem_before": rollout_sem(rows[0], cfg.ppo.rollout_batch_size),
                   "sem_after": rollout_sem(rows[-1], cfg.ppo.rollout_batch_size)} if rows else None,
        "normalized_reward": {"before": rows[0]["reward_mean"], "after": rows[-1]["reward_mean"]} if rows else None,
        # the reward model's raw score on the held-out prompts, with its standard error over them
        "val_reward": {"before": evals[0]["val/reward"], "after": evals[-1]["val/reward"],
                       "sem_before": evals[0].get("val/reward_sem"), "sem_after": evals[-1].get("val/reward_sem")}
        if evals else None,
        "val_reward_change": paired_change(run_dir / "heldout.jsonl"),
        "kl_final": rows[-1]["kl"] if rows else None,
        "kl_val_final": evals[-1]["val/kl"] if evals else None,
        "samples": str(run_dir / "samples.jsonl"), "plot": str(run_dir / "ppo.png"),
        "export_max_logit_diff": summary.get("export_max_logit_diff"),
    }


def rollout_sem(row: dict, n: int) -> float:
    return row.get("rm_score_std", row["reward_std"]) / n ** 0.5


def _prompt_means(rows: list[dict]) -> dict[int, float]:
    """Each held-out prompt's mean reward over its samples."""
    by: dict[int, list[float]] = {}
    for r in rows:
        by.setdefault(r["prompt_index"], []).append(r["reward"])
    return {i: sum(v) / len(v) for i, v in by.items()}


def paired_change(path: Path) -> dict | None:
    """The held-out reward's change from the first evaluation to the last, prompt by prompt (the
    same prompts and sampling seeds): mean, its standard error, and how many prompts rose / fell."""
    import json
    import math

    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    its = sorted({r["iteration"] for r in rows})
    if len(its) < 2:
        return None
    first, last = (_prompt_means([r for r in rows if r["iteration"] == it]) for it in (its[0], its[-1]))
    diffs = [last[k] - first[k] for k in sorted(first.keys() & last.keys())]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    return {"iterations": [its[0], its[-1]], "prompts": n, "mean": mean, "sem": sd / math.sqrt(n) if n else 0.0,
            "rose": sum(d > 0 for d in diffs), "fell": sum(d < 0 for d in diffs)}


def evidence_line(ppo: dict) -> str:
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    r, v, c = ppo.get("reward") or {}, ppo.get("val_reward") or {}, ppo.get("val_reward_change")
    pm = lambda d, k: f" ± {f(d[k])}" if d.get(k) is not None else ""  # noqa: E731
    held = (f"; held-out {f(v.get('before'))}{pm(v, 'sem_before')} -> {f(v.get('after'))}{pm(v, 'sem_after')}"
            if v else "")
    if c:
        held += (f" (paired change {c['mean']:+.3f} ± {c['sem']:.3f} s.e. over {c['prompts']} prompts: "
                 f"{c['rose']} rose, {c['fell']} fell)")
    return (f"PPO reward-model score {f(r.get('before'))}{pm(r, 'sem_before')} -> {f(r.get('after'))}"
            f"{pm(r, 'sem_after')} (rollouts) over {ppo.get('iterations')} "
            f"iterations{held}; final KL to the SFT model {f(ppo.get('kl_final'))} nats per response")
