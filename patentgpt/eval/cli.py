"""``patentgpt eval``: score a model on task files under evals/ (lm-eval underneath).

    patentgpt eval --model runs/demo/runs/.../export --tasks ipquiz patentbar_tf --out runs/eval --limit 100
    patentgpt eval --config configs/eval/demo.yaml --set limit=20
    patentgpt eval --list

Writes results.json, results.md, results.png and outcomes.jsonl into --out and logs to W&B.
``--against`` names training data (token shard sets or JSONL documents) for the contamination
report; ``--decontaminate`` adds scores on the clean items only.
"""

from __future__ import annotations

import argparse
from typing import Literal

from pydantic import Field

from patentgpt.config import Section


class EvalConfig(Section):
    model: str | None = Field(None, description="HF model directory (an export)")
    tokenizer: str | None = Field(None, description="default: the model directory's tokenizer")
    tasks: list[str] = Field(default_factory=list, description="task names under evals/ or task YAML paths")
    out: str = "runs/eval"
    limit: int | None = Field(None, ge=1, description="at most this many items per task and language")
    batch_size: int = Field(32, ge=1)
    against: list[str] = Field(default_factory=list, description="training data for the contamination report")
    ngram: int = Field(13, ge=1)
    decontaminate: bool = False
    judge: str | None = Field(None, description="HF model directory of a pairwise judge for open questions")
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on IP benchmarks (evals/*.yaml)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with the keys of EvalConfig (flags override it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model")
    p.add_argument("--tokenizer")
    p.add_argument("--tasks", nargs="+")
    p.add_argument("--out")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--against", nargs="+", help="token shard sets or JSONL documents to check for eval items")
    p.add_argument("--ngram", type=int)
    p.add_argument("--decontaminate", action="store_true", default=None, help="also score clean items only")
    p.add_argument("--judge")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"])
    p.add_argument("--list", action="store_true", help="list the task files and exit")
    p.set_defaults(func=_run)
    # `patentgpt eval long-context ...`: passkey and perplexity by position (patentgpt/eval/long_context.py)
    from patentgpt.eval.long_context import register as register_long_context

    register_long_context(p.add_subparsers(dest="eval_command", metavar="{long-context}", required=False))


def resolve_config(args) -> EvalConfig:
    from patentgpt.config import ConfigError, load_config
    from patentgpt.config.base import validate

    flags = {k: getattr(args, k) for k in EvalConfig.model_fields if getattr(args, k, None) is not None}
    cfg = load_config(EvalConfig, args.config, args.overrides) if args.config else \
        load_config(EvalConfig, data={}, overrides=args.overrides)
    cfg = validate(EvalConfig, {**cfg.model_dump(), **flags}, source=args.config or "command line")

    if not cfg.model:
        raise ConfigError("model: no model given (--model HF_DIR or model: in the config)")
    if not cfg.tasks:
        raise ConfigError("tasks: no task given (--tasks NAME ...; --list shows them)")
    if cfg.decontaminate and not cfg.against:
        raise ConfigError("against: --decontaminate needs training data (--against SHARDS_OR_DOCS ...)")
    return cfg


def _run(args) -> int:
    from pathlib import Path

    from patentgpt.eval.tasks import load_spec, task_files

    if args.list:
        for name, path in task_files().items():
            spec = load_spec(path)
            print(f"{name:20s} {spec.type:16s} {', '.join(spec.languages):6s} {spec.description}")
        return 0
    cfg = resolve_config(args)
    from patentgpt.eval.harness import evaluate, flat_metrics
    from patentgpt.eval.report import log_wandb, markdown_table

    from patentgpt.eval.tasks import resolve_task

    for name in cfg.tasks:
        load_spec(resolve_task(name))  # every task file is validated before the model loads
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"model: {cfg.model} is not a directory")
    out = Path(cfg.out)
    results = evaluate(cfg.model, cfg.tasks, out, tokenizer=cfg.tokenizer, limit=cfg.limit, batch_size=cfg.batch_size,
                       contamination_sources=cfg.against, ngram=cfg.ngram, decontaminate=cfg.decontaminate,
                       judge=cfg.judge)
    print(markdown_table(results))
    log_wandb(results, flat_metrics(results), out, mode=cfg.wandb)
    print(f"eval finished in {results['seconds']} s; results: {out / 'results.json'}, {out / 'results.md'}")
    return 0
