"""The ``patentgpt`` command line.

Each command group lives beside the code it drives and exposes ``register(subparsers)``;
handlers import their heavy dependencies (torch, transformers, deepspeed) only when run,
so ``patentgpt --help`` and config errors come back within a second or two.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "patentgpt.demo",
    "patentgpt.train.cli",
    "patentgpt.data.cli",
    "patentgpt.tokenizer.cli",
    "patentgpt.model.cli",
    "patentgpt.ablate",
    "patentgpt.eval.cli",
    "patentgpt.embed.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patentgpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from patentgpt.errors import USER_ERRORS
    from patentgpt.train.dist import venv_torch_extensions_dir

    venv_torch_extensions_dir()  # before anything launches or imports DeepSpeed
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"patentgpt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
