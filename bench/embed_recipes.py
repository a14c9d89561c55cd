"""Fine-tuning recipes against zero-shot all-MiniLM-L6-v2 on their task's held-out part.

Trains a config of configs/embed/ through `patentgpt embed train` (the train() it calls) and scores
the base model and the export on the held-out part of the config's task. Targets (issue #12):

- configs/embed/phrase.yaml (CoSENT on the anchor-disjoint train split of phrase matching):
  test Pearson >= 0.75, from about 0.56 zero-shot; configs/embed/phrase_cross.yaml (a cross-encoder
  on anchor / target [SEP] CPC title) against the same target (it has no zero-shot figure of its own);
- configs/embed/r3_patentsview.yaml (R3 cross-sectional alignment, title <-> abstract):
  title -> abstract nDCG@10 on held-out patents above zero-shot.

Prints JSON; the export lands in --out. ``--dev-only`` scores only the dev part of a phrase task
(choices are made there; test is reported once, e.g. by ``patentgpt embed eval`` on the export).

    PATENTGPT_SHARED_DATA=../shared/data python bench/embed_recipes.py --config configs/embed/phrase.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs/embed/phrase.yaml"))
    ap.add_argument("--out", default="runs/bench/embed_recipe")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--dev-only", action="store_true", help="phrase recipes: score the dev part only (for choices)")
    args = ap.parse_args()

    from patentgpt.config import load_config
    from patentgpt.embed.train import PAIR_RECIPES, EmbedTrainConfig, train

    cfg = load_config(EmbedTrainConfig, args.config,
                      [f"output_dir={args.out}", *args.overrides, f"evaluate={not args.dev_only}"])
    t0 = time.time()
    summary = train(cfg)
    dev = None
    if cfg.recipe in PAIR_RECIPES:   # the dev part is where recipes are compared; test is reported once
        from patentgpt.embed.extract import load_scorer
        from patentgpt.embed.taskdef import find_tasks, load_task
        from patentgpt.embed.tasks import run_task

        dev = run_task(load_task(find_tasks([cfg.task])[0], ["eval_part=dev"]), load_scorer(cfg.output_dir))["headline"]
        if args.dev_only:
            print(json.dumps({"config": args.config, "overrides": args.overrides, "recipe": cfg.recipe,
                              "examples": summary["examples"], "train_seconds": summary["train_seconds"],
                              "train_loss": summary["train_loss"], "fine_tuned_dev": dev,
                              "dev_curve": summary.get("dev_curve")}, indent=2))
            return
    # a cross-encoder's untrained head has no zero-shot figure: compare with the zero-shot bi-encoder there
    base, tuned = summary.get("base", {"headline": None, "metrics": None}), summary["fine_tuned"]
    if cfg.recipe in PAIR_RECIPES:
        target, met = "test Pearson >= 0.75", tuned["headline"]["pearson"] >= 0.75
    else:
        key = next(iter(base["headline"]))
        target, met = f"{key} above zero-shot", tuned["headline"][key] > base["headline"][key]
    result = {"config": args.config, "overrides": args.overrides, "recipe": cfg.recipe, "task": summary["task"],
              "examples": summary["examples"], "train_seconds": summary["train_seconds"],
              "total_seconds": round(time.time() - t0, 1),
              "zero_shot": base["headline"], "fine_tuned": tuned["headline"], "fine_tuned_dev": dev,
              "zero_shot_metrics": base["metrics"], "fine_tuned_metrics": tuned["metrics"],
              "target": target, "met": met}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
