"""Stage-2 demonstration on CPU: 256 -> 1024 tokens (the 4x of 4k -> 16k), scaled down.

    python bench/stage2_demo.py [--out runs/stage2_demo] [--reuse]

1. a demo IP tokenizer and the data of configs/data/stage2_demo.yaml (../shared/data: modern
   abstracts and long 19th-century patents; stage 2 up-samples long documents by length);
2. stage 1 at 256 tokens (configs/pretrain/stage1_demo_256.yaml);
3. stage 2 at 1024 tokens from the stage-1 export with ABF, PI and YaRN, and a control that
   continues stage 1 at 256 tokens for the same steps (`patentgpt ablate configs/ablations/stage2_rope.yaml`);
4. `patentgpt eval long-context` on the held-out full-text USPTO patents: the stage-1 model
   zero-shot at 1024 (no scaling, and ABF / PI / YaRN applied at inference) and each stage-2
   model; then the comparison table and PNG (`--compare`) and the checks of issue #10: every
   stage-2 model beats stage 1 on positions 256-1024 and loses at most 2% perplexity on 0-256.

Writes ``<out>/compare/`` (compare.md, compare.png, compare.json) and ``<out>/stage2_demo.json``.
``--reuse`` keeps what an earlier run built (tokenizer, data, models) and only re-runs the rest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO / "configs/data/stage2_demo.yaml"
STAGE1 = REPO / "configs/pretrain/stage1_demo_256.yaml"
SWEEP = REPO / "configs/ablations/stage2_rope.yaml"
ZERO_SHOT = {  # RoPE scalings applied at inference to the stage-1 model (trained at 256) read at 1024
    "none": {},
    "abf": {"type": "abf", "rope_theta": 100000.0},
    "pi": {"type": "linear", "factor": 4.0, "original_length": 256},
    "yarn": {"type": "yarn", "factor": 4.0, "original_length": 256},
}
LENGTHS = [256, 512, 1024]
BUCKETS = [0, 256, 1024]


def _phase(name: str, t0: float) -> None:
    print(f"== {name} ({time.time() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/stage2_demo")
    ap.add_argument("--reuse", action="store_true", help="keep the tokenizer, data and models of an earlier run")
    ap.add_argument("--trials", type=int, default=6, help="passkey prompts per (length, depth)")
    args = ap.parse_args(argv)

    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig
    from patentgpt.data.pipeline.runner import run_pipeline
    from patentgpt.demo import build_tokenizer
    from patentgpt.eval.long_context import RopeOverride, compare, evaluate_long_context
    from patentgpt.eval.tasks import shared_data_dir
    from patentgpt.io import atomic_write_json
    from patentgpt.train.config import PretrainConfig
    from patentgpt.train.stages import run_stage

    t0 = time.time()
    out = Path(args.out)
    tok_dir = out / "tokenizer" / "hf"
    if not shared_data_dir().is_dir():
        raise SystemExit(f"stage2_demo: needs ../shared/data (or $PATENTGPT_SHARED_DATA); not at {shared_data_dir()}")
    if not (args.reuse and tok_dir.is_dir()):
        _phase("1/5 tokenizer", t0)
        build_tokenizer(out / "tokenizer", 3000)
    mixtures = out / "data" / "mixtures"
    if not (args.reuse and (mixtures / "stage2" / "mixture.yaml").is_file()):
        _phase("2/5 data: stage-1 and stage-2 mixtures", t0)
        run_pipeline(load_config(DataPipelineConfig, DATA, [f"output_dir={out / 'data'}",
                                                             f"input_root={shared_data_dir()}",
                                                             f"mixtures.tokenizer={tok_dir}"]))
    stage1_export = out / "runs" / "stage1" / "export"
    if not (args.reuse and stage1_export.is_dir()):
        _phase("3/5 stage 1 at 256 tokens", t0)
        run_stage("pretrain", load_config(PretrainConfig, STAGE1, [
            f"data.tokenizer={tok_dir}", f"data.mixture={mixtures / 'stage1' / 'mixture.yaml'}",
            f"run.output_dir={out / 'runs'}"]))
    group = out / "runs" / "stage2-rope"
    variants = ["abf", "pi", "yarn"]
    if not (args.reuse and all((group / f"stage2-rope-{v}" / "export").is_dir() for v in [*variants, "control"])):
        _phase("4/5 stage 2 at 1024 tokens: ABF, PI, YaRN (patentgpt ablate)", t0)
        # the sweep's paths are the repository-relative defaults; --out elsewhere needs a copy of them
        if out.resolve() != (REPO / "runs/stage2_demo").resolve():
            raise SystemExit("stage2_demo: the ablation file names runs/stage2_demo; run from the repository "
                             "root with the default --out")
        from patentgpt.train.dist import env_without_rendezvous

        rc = subprocess.run([sys.executable, "-m", "patentgpt.cli", "ablate", str(SWEEP.relative_to(REPO))],
                            cwd=REPO, env=env_without_rendezvous()).returncode  # stage 1 ran in this process
        if rc != 0:
            raise SystemExit(f"stage2_demo: the stage-2 sweep failed (exit {rc})")
    _phase("5/5 long-context evaluation", t0)
    ev = out / "eval"
    dirs, labels = [], []
    for name, rope in ZERO_SHOT.items():
        d = ev / f"stage1-{name}"
        evaluate_long_context(stage1_export, d, rope=RopeOverride(**rope), lengths=LENGTHS, depths=[0.0, 0.5, 1.0],
                              trials=args.trials, buckets=BUCKETS)
        dirs.append(d)
        labels.append(f"stage 1 zero-shot, {name} at inference")
    for v in variants:
        d = ev / f"stage2-{v}"
        evaluate_long_context(group / f"stage2-rope-{v}" / "export", d, lengths=LENGTHS, depths=[0.0, 0.5, 1.0],
                              trials=args.trials, buckets=BUCKETS)
        dirs.append(d)
        labels.append(f"stage 2 {v}")
    for name in ("none", "pi"):  # stage 1 continued at 256 for the same steps, read at 1024
        d = ev / f"control-{name}"
        evaluate_long_context(group / "stage2-rope-control" / "export", d, rope=RopeOverride(**ZERO_SHOT[name]),
                              lengths=LENGTHS, depths=[0.0, 0.5, 1.0], trials=args.trials, buckets=BUCKETS)
        dirs.append(d)
        labels.append(f"control (+same steps at 256), {name} at inference")
    summary = compare(dirs, out / "compare", labels=labels)
    rows = {r["label"]: r for r in summary["rows"]}
    base = rows["stage 1 zero-shot, none at inference"]["ppl"]
    best_stage1_long = min(rows[f"stage 1 zero-shot, {n} at inference"]["ppl"]["256-1024"] for n in ZERO_SHOT)
    best_control_long = min(rows[f"control (+same steps at 256), {n} at inference"]["ppl"]["256-1024"]
                            for n in ("none", "pi"))
    checks = {}
    for v in variants:
        p = rows[f"stage 2 {v}"]["ppl"]
        same = rows[f"stage 1 zero-shot, {v} at inference"]["ppl"]
        checks[v] = {"ppl_256_1024": p["256-1024"], "beats_stage1_same_scaling": p["256-1024"] < same["256-1024"],
                     "beats_best_stage1": p["256-1024"] < best_stage1_long,
                     "beats_control": p["256-1024"] < best_control_long,
                     "long_over_short_ratio": p["256-1024"] / p["0-256"],
                     "ppl_0_256_change_vs_stage1": p["0-256"] / base["0-256"] - 1,
                     "short_within_2pct": p["0-256"] <= 1.02 * base["0-256"]}
    report = {"seconds": round(time.time() - t0, 1), "table": summary["table"], "checks": checks,
              "compare": str(out / "compare")}
    atomic_write_json(out / "stage2_demo.json", report)
    print(summary["table"])
    for v, c in checks.items():
        print(f"stage 2 {v}: 256-1024 ppl {c['ppl_256_1024']:.2f} (beats stage 1 with the same scaling: "
              f"{c['beats_stage1_same_scaling']}, beats every stage-1 scaling: {c['beats_best_stage1']}, beats the "
              f"256-token control: {c['beats_control']}); "
              f"0-256 ppl {c['ppl_0_256_change_vs_stage1']:+.1%} vs stage 1 (within 2%: {c['short_within_2pct']})")
    print(f"stage-2 demonstration finished in {report['seconds']} s; {out / 'compare' / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
