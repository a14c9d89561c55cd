"""``patentgpt pretrain`` / ``launch/pretrain.py`` and ``patentgpt export``."""

from __future__ import annotations

import argparse
import json
import sys


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (may name a parent)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="continued pretraining on DeepSpeed (dense or MoE)")
    add_config_args(p)
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.set_defaults(func=_pretrain)

    e = sub.add_parser("export", help="checkpoint -> transformers model directory (safetensors)")
    e.add_argument("checkpoint", help="RUN_DIR/checkpoints/step_XXXXXXXX")
    e.add_argument("out")
    e.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    e.set_defaults(func=_export)


def _pretrain(args) -> int:
    from patentgpt.config import load_config
    from patentgpt.train.config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    from patentgpt.config import dump_redacted
    from patentgpt.config.checks import check_pretrain_paths

    check_pretrain_paths(cfg)  # tokenizer / init_from / output dir, before any heavy start-up
    if args.check:
        print(dump_redacted(cfg))
        return 0
    from patentgpt.train.pretrain import run_pretraining

    summary = run_pretraining(cfg)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
    return 0


def _export(args) -> int:
    from patentgpt.train.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, dtype=args.dtype))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of launch/pretrain.py (what ``deepspeed launch/pretrain.py`` runs)."""
    from patentgpt.config import ConfigError
    from patentgpt.data.shards import ShardError

    parser = argparse.ArgumentParser(prog="launch/pretrain.py", description="PatentGPT pretraining")
    add_config_args(parser)
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    try:
        return _pretrain(args)
    except (ConfigError, ShardError, FileNotFoundError) as exc:
        print(f"pretrain: error: {exc}", file=sys.stderr)
        return 2
