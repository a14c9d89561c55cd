"""``patentgpt pretrain|sft|rm|ppo`` / ``launch/<stage>.py`` (what ``deepspeed`` runs) and ``patentgpt export``."""

from __future__ import annotations

import argparse
import json
import sys

HELP = {
    "pretrain": "continued pretraining on DeepSpeed (dense or MoE)",
    "sft": "supervised fine-tuning on chat data (assistant-only loss, packed conversations)",
    "rm": "reward model: scalar head, Bradley-Terry loss on preference pairs",
    "ppo": "PPO-based RLHF: actor (SFT export), critic (reward-model export), frozen reference and reward model",
}


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (may name a parent)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction) -> None:
    for stage, text in HELP.items():
        p = sub.add_parser(stage, help=text)
        add_config_args(p)
        p.set_defaults(func=_train, stage=stage)

    e = sub.add_parser("export", help="checkpoint -> transformers model directory (safetensors)")
    e.add_argument("checkpoint", help="RUN_DIR/checkpoints/step_XXXXXXXX")
    e.add_argument("out")
    e.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    e.set_defaults(func=_export)


def _train(args) -> int:
    from patentgpt.config import load_config
    from patentgpt.train.stages import config_class, run_stage

    cfg = load_config(config_class(args.stage), args.config, args.overrides)
    from patentgpt.config import dump_redacted
    from patentgpt.config.checks import check_train_paths

    check_train_paths(cfg)  # tokenizer / init_from / data / output dir, before any heavy start-up
    if args.check:
        print(dump_redacted(cfg))
        return 0
    summary = run_stage(args.stage, cfg)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("losses", "evals")}, indent=2,
                         ensure_ascii=False))
    return 0


def _export(args) -> int:
    from patentgpt.train.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, dtype=args.dtype))
    return 0


def main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``launch/<stage>.py`` (what ``deepspeed launch/<stage>.py`` runs)."""
    from patentgpt.errors import USER_ERRORS
    from patentgpt.train.dist import venv_torch_extensions_dir

    venv_torch_extensions_dir()  # each rank the deepspeed launcher starts, before DeepSpeed loads

    parser = argparse.ArgumentParser(prog=f"launch/{stage}.py", description=f"PatentGPT {stage}: {HELP[stage]}")
    add_config_args(parser)
    args = parser.parse_args(argv)
    args.stage = stage
    try:
        return _train(args)
    except USER_ERRORS as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        return 2
