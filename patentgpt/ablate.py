"""``patentgpt ablate SWEEP.yaml``: a grid of training runs (any stage) from one base config.

A sweep file::

    group: moe-vs-dense              # W&B group and the runs' parent directory
    stage: pretrain                  # pretrain (default), sft, rm, ... (patentgpt.train.stages.STAGES)
    base: ../pretrain/demo_dense.yaml
    launcher: python                 # or e.g. "deepspeed --num_gpus 8"
    set: {train.max_steps: 100}      # overrides for every run
    variants:                        # named override sets (a variant may swap the config)
      dense: {}
      moe: {config: ../pretrain/demo_moe.yaml}
    grid:                            # cartesian product over dotted keys
      optim.lr: [1.0e-3, 2.0e-3]

Every run is validated before anything starts; each gets its own run directory and W&B group.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from patentgpt.config import ConfigError, Section, load_config, load_yaml_tree

class Variant(Section):
    config: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)


class Sweep(Section):
    group: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    stage: str = "pretrain"
    base: str
    launcher: str = "python"
    set: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, Variant] = Field(default_factory=lambda: {"base": Variant()})
    grid: dict[str, list[Any]] = Field(default_factory=dict)


@dataclass
class PlannedRun:
    name: str
    config: str
    overrides: list[str]
    script: str
    run_dir: Path | None = None

    def command(self, launcher: str) -> str:
        parts = [*shlex.split(launcher), self.script, "--config", self.config]
        for o in self.overrides:
            parts += ["--set", o]
        return shlex.join(parts)


def _fmt(value: Any) -> str:
    return str(value).replace("/", "_")


def plan(sweep_path: str | Path) -> tuple[Sweep, list[PlannedRun]]:
    from patentgpt.config.base import validate
    from patentgpt.train.stages import STAGES, config_class

    sweep_path = Path(sweep_path)
    sweep = validate(Sweep, load_yaml_tree(sweep_path), source=str(sweep_path))
    if sweep.stage not in STAGES:
        raise ConfigError(f"stage: {sweep.stage!r} is not a stage; choose from {', '.join(STAGES)}")
    config_cls, script = config_class(sweep.stage), STAGES[sweep.stage][2]
    here = sweep_path.resolve().parent
    keys = list(sweep.grid)
    runs = []
    for vname, variant in sweep.variants.items():
        config = (here / (variant.config or sweep.base)).resolve()
        for values in itertools.product(*(sweep.grid[k] for k in keys)) if keys else [()]:
            suffix = "".join(f"-{k.split('.')[-1]}={_fmt(v)}" for k, v in zip(keys, values))
            name = f"{sweep.group}-{vname}{suffix}"
            sets = {**sweep.set, **variant.set, **dict(zip(keys, values))}
            base_cfg = load_config(config_cls, config)
            overrides = [f"{k}={v}" for k, v in sets.items()] + [
                f"run.name={name}",
                f"run.output_dir={Path(base_cfg.run.output_dir) / sweep.group}",
                f"logging.wandb.group={sweep.group}",
            ]
            try:
                load_config(config_cls, config, overrides)
            except ConfigError as exc:
                raise ConfigError(f"sweep {sweep_path}, run {name}: {exc}") from None
            rel = config.relative_to(Path.cwd()) if config.is_relative_to(Path.cwd()) else config
            runs.append(PlannedRun(name, str(rel), overrides, script,
                                   Path(base_cfg.run.output_dir) / sweep.group / name))
    return sweep, runs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="run (or print) a sweep of training runs (any stage)")
    p.add_argument("sweep", help="sweep YAML, e.g. configs/ablations/moe_vs_dense.yaml")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print each run's name and command")
    mode.add_argument("--emit", action="store_true", help="print only the launch commands (for a scheduler)")
    mode.add_argument("--report", action="store_true", help="only (re)write the comparison table and PNG of "
                                                            "the runs already finished")
    p.set_defaults(func=_ablate)


def _ablate(args) -> int:
    sweep, runs = plan(args.sweep)
    if args.emit:
        for r in runs:
            print(r.command(sweep.launcher))
        return 0
    if args.dry_run:
        for r in runs:
            print(f"{r.name}\n  {r.command(sweep.launcher)}")
        print(f"{len(runs)} runs in group {sweep.group}")
        return 0
    if args.report:
        return _report(sweep, runs)
    failed = []
    for i, r in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {r.name}", flush=True)
        cmd = shlex.split(r.command(sweep.launcher))
        if cmd[0] == "python":
            cmd[0] = sys.executable
        if subprocess.run(cmd).returncode != 0:
            failed.append(r.name)
    print(f"{len(runs) - len(failed)} of {len(runs)} runs finished" + (f"; failed: {failed}" if failed else ""))
    _report(sweep, runs)
    return 1 if failed else 0


def _report(sweep: Sweep, runs: list[PlannedRun]) -> int:
    """comparison.md / .json / .png of the sweep's runs (patentgpt/ablate_report.py)."""
    from patentgpt.ablate_report import print_table, write_comparison

    group_dir = runs[0].run_dir.parent if runs else Path(".")
    if not write_comparison(group_dir, {r.name: r.run_dir for r in runs}):
        print(f"no finished runs of {sweep.group} to compare under {group_dir}")
        return 1
    print_table(group_dir)
    return 0
