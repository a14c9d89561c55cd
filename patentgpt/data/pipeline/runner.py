"""Run the steps a config lists, in order, resumably.

Each step works in ``OUTPUT_DIR/.<step>.tmp/`` and is renamed to ``OUTPUT_DIR/<step>/`` when it
has finished, after ``stats.json`` and, last, ``DONE``. ``DONE`` holds

* ``config``: a hash of the config sections the step depends on (sources and input file sizes
  and mtimes for ingest, ``clean`` for clean, ...),
* ``input_id``: the ``output_id`` of the step before it (so a redone step redoes all after it),
* ``output_id``: a fresh id for what it wrote.

On a rerun a step is skipped when its ``DONE`` matches both, so changing a filter threshold redoes
``filter`` and what follows, not ``ingest``; a killed step left only its temporary directory,
which is removed and redone. ``force_steps`` redoes the named steps (and, their outputs being
new, every step after them). Only configuration problems stop a run
(:class:`~patentgpt.config.ConfigError`, checked before any work); bad records are counted.
At the end ``report.json`` (record accounting, checked to add up) and ``rejects.jsonl`` (all
removals, with reason and source location) are written, and a summary line is printed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from patentgpt.config import ConfigError, save_config
from patentgpt.data.pipeline.config import STEP_ORDER, DataPipelineConfig
from patentgpt.data.pipeline.executor import make_executor, maxrss_mb
from patentgpt.data.pipeline.partitions import PARTS
from patentgpt.data.pipeline.report import Ledger, build_report
from patentgpt.data.pipeline.steps import LEDGER_STEPS, STEPS, StepContext, latest_docs, ledgers
from patentgpt.io import atomic_open, atomic_write_json, publish_dir

FORMAT_VERSION = 1
DONE = "DONE"
RESUME = "RESUME"
STATS = "stats.json"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def step_config(step: str, cfg: DataPipelineConfig, files: dict[str, list[Path]]) -> str:
    """Hash of what a step's output depends on, besides its input."""
    dump = cfg.model_dump(mode="json")
    part: dict = {"version": FORMAT_VERSION, "step": step}
    if step in ("ingest", "clean", "lang", "filter", "dedup", "rewrite"):
        part["compress"] = cfg.compress
    if step == "ingest":
        part["sources"] = [{k: v for k, v in s.items() if k not in ("filters", "priority")} for s in dump["sources"]]
        part["input_root"] = str(Path(cfg.input_root).resolve())
        part["files"] = {name: [_file_stamp(p) for p in paths] for name, paths in files.items()}
    elif step == "filter":
        part["filters"] = dump["filters"]
        part["overrides"] = {s["name"]: s["filters"] for s in dump["sources"]}
    elif step == "dedup":
        part["dedup"] = dump["dedup"]
        part["seed"] = cfg.seed
        part["priorities"] = {s["name"]: s["priority"] for s in dump["sources"]}
    elif step == "synth":
        part["synth"] = dump["synth"]
        qa = [Path(f) if Path(f).is_absolute() else Path(cfg.input_root) / f
              for f in (getattr(cfg.synth, "qa_files", None) or [])]
        part["qa_files"] = [_file_stamp(p) for p in qa if p.is_file()]
    elif step == "mixtures":
        part["mixtures"] = dump["mixtures"]
        tok = Path(cfg.mixtures.tokenizer)
        part["tokenizer"] = sorted(_file_stamp(p) for p in tok.iterdir() if p.is_file()) if tok.is_dir() else []
    elif step == "card":
        part["card"] = dump["card"]
        part["name"] = cfg.name
    else:
        part[step] = dump[step]
    return _digest(part)


def check_config(cfg: DataPipelineConfig) -> dict[str, list[Path]]:
    """Everything that can be checked before work starts; returns the input files per source."""
    from patentgpt.data.pipeline.ingest import resolve_files

    files = resolve_files(cfg)
    if "mixtures" in cfg.steps:
        from patentgpt.config.checks import check_tokenizer_dir

        check_tokenizer_dir(cfg.mixtures.tokenizer, "mixtures.tokenizer")
    for step in ("synth", "rewrite"):
        section = getattr(cfg, step)
        if step in cfg.steps and getattr(section, "enabled", False):
            try:
                __import__(f"patentgpt.data.pipeline.{step}")
            except ImportError as exc:
                raise ConfigError(f"{step}.enabled: the {step} step is not available: {exc}") from None
    if "synth" in cfg.steps and getattr(cfg.synth, "enabled", False):
        for i, f in enumerate(getattr(cfg.synth, "qa_files", None) or []):
            path = Path(f) if Path(f).is_absolute() else Path(cfg.input_root) / f
            if not path.is_file():
                raise ConfigError(f"synth.qa_files.{i}: {path} not found")
    return files


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _merge_rejects(out: Path, steps: list[str]) -> int:
    n = 0
    with atomic_open(out / "rejects.jsonl") as fh:
        for step in steps:
            path = out / step / "rejects.jsonl"
            if not path.is_file():
                continue
            with open(path, encoding="utf-8") as src:
                for line in src:
                    row = json.loads(line)
                    fh.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
                    n += 1
    return n


def run_pipeline(cfg: DataPipelineConfig, *, force_steps: tuple[str, ...] = (),
                 log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the pipeline; returns a summary (also in ``report.json``)."""
    unknown = [s for s in force_steps if s not in cfg.steps]
    if unknown:
        raise ConfigError(f"--force-step: {unknown} not among this config's steps {cfg.steps}")
    files = check_config(cfg)
    t_start = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    step_stats: dict[str, dict] = {}
    executor = None  # made when the first step runs (a Ray cluster is joined only when there is work)
    try:
        report = _run_steps(cfg, files, out, force_steps, log, step_stats, t_start, executor_box := [])
    finally:
        for ex in executor_box:
            ex.close()
    return report


def _run_steps(cfg, files, out, force_steps, log, step_stats, t_start, executor_box: list) -> dict:
    executor = None
    upstream_id = _digest({"inputs": {k: [_file_stamp(p) for p in v] for k, v in files.items()}})
    docs_file: Path | None = None
    ran, skipped = [], []
    for step in cfg.steps:
        final = out / step
        config_hash = step_config(step, cfg, files)
        done = _read_json(final / DONE)
        if (step not in force_steps and done is not None and done.get("config") == config_hash
                and done.get("input_id") == upstream_id and (final / STATS).is_file()):
            stats = _read_json(final / STATS)
            skipped.append(step)
            log(f"[{step}] done earlier, skipped")
        else:
            tmp = out / f".{step}.tmp"
            resumed = prepare_work_dir(tmp, {"config": config_hash, "input_id": upstream_id,
                                             "partition_docs": cfg.partition_docs},
                                       fresh=step in force_steps)
            ledger = Ledger(tmp / "rejects.jsonl") if step in LEDGER_STEPS else None
            if executor is None:
                executor = make_executor(cfg)
                executor_box.append(executor)
            ctx = StepContext(cfg=cfg, name=step, out_root=out, work_dir=tmp, input_docs=docs_file,
                              step_stats=step_stats, ledger=ledger, executor=executor)
            t0 = time.time()
            log(f"[{step}] running" + (f" (resuming: {resumed} finished partitions kept)" if resumed else ""))
            try:
                STEPS[step](ctx)
            finally:
                if ledger is not None:
                    ledger.close()
            skipped_step = bool(ctx.extra.get("skipped"))
            stats = {
                "step": step,
                "seconds": round(time.time() - t0, 3),
                "ledger": ledger.stats() if ledger is not None and not skipped_step else None,
                "extra": ctx.extra,
                "docs": ctx.wrote_docs,
                "memory": step_memory(ctx.memory, executor),
            }
            shutil.rmtree(tmp / PARTS, ignore_errors=True)
            (tmp / RESUME).unlink(missing_ok=True)
            if skipped_step and ledger is not None:
                (tmp / "rejects.jsonl").unlink(missing_ok=True)
            atomic_write_json(tmp / STATS, stats)
            done = {"step": step, "config": config_hash, "input_id": upstream_id, "output_id": uuid.uuid4().hex,
                    "seconds": stats["seconds"]}
            atomic_write_json(tmp / DONE, done)
            publish_dir(tmp, final)
            ran.append(step)
            log(f"[{step}] finished in {stats['seconds']:.1f} s{_step_note(stats)}")
        step_stats[step] = stats
        upstream_id = done["output_id"]  # every later step depends on this one's output
        if stats.get("docs"):
            docs_file = latest_docs(final)

    report = build_report(ledgers(step_stats), [s.name for s in cfg.sources])
    report["steps"] = {s: {"seconds": st["seconds"], **({"skipped": st["extra"]["skipped"]}
                                                       if st["extra"].get("skipped") else {}),
                           **({"memory": st["memory"]} if st.get("memory") else {})}
                       for s, st in step_stats.items()}
    report["ran"], report["skipped"] = ran, skipped
    if "mixtures" in step_stats:
        report["stages"] = {stage: {name: {"docs": s["docs"], "tokens": s["tokens"], "weight": s.get("weight")}
                                    for name, s in sets.items()}
                            for stage, sets in step_stats["mixtures"]["extra"]["stages"].items()}
    if "synth" in step_stats and not step_stats["synth"]["extra"].get("skipped"):
        report["synth"] = {k: step_stats["synth"]["extra"][k] for k in ("output", "examples")}
    n_rejects = _merge_rejects(out, [s for s in cfg.steps if s in LEDGER_STEPS])
    report["rejects_file"] = str(out / "rejects.jsonl")
    report["rejects_written"] = n_rejects
    atomic_write_json(out / "report.json", report)
    log(summary_line(cfg, report, time.time() - t_start))
    return report


def prepare_work_dir(tmp: Path, fingerprint: dict, fresh: bool) -> int:
    """Make a step's temporary directory. When a killed earlier attempt of the same step (same
    config, same input, same partitioning) left one, its finished partitions (``parts/``) are kept
    and everything else is removed; returns how many partitions were kept."""
    prev = _read_json(tmp / RESUME)
    if fresh or prev != fingerprint:
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.is_dir():
        for child in tmp.iterdir():
            if child.name not in (PARTS, RESUME):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    tmp.mkdir(parents=True, exist_ok=True)
    atomic_write_json(tmp / RESUME, fingerprint)
    return sum(1 for _ in (tmp / PARTS).glob("*/*.done.json")) if (tmp / PARTS).is_dir() else 0


def step_memory(stages: dict, executor) -> dict:
    """Peak resident memory of the step: per stage, the largest of its worker tasks; and the driver's."""
    out = {"executor": getattr(executor, "name", None), "workers": getattr(executor, "workers", None),
           "driver_peak_rss_mb": maxrss_mb()}
    if stages:
        out["stages"] = stages
        out["worker_peak_rss_mb"] = max(s["peak_rss_mb_max"] for s in stages.values())
    return out


def _step_note(stats: dict) -> str:
    led = stats.get("ledger")
    if not led:
        return " (skipped: disabled)" if stats["extra"].get("skipped") else ""
    kept = sum(s["kept"] for s in led["sources"].values())
    removed = sum(sum(s["removed"].values()) for s in led["sources"].values())
    return f": kept {kept}, removed {removed}"


def summary_line(cfg: DataPipelineConfig, report: dict, seconds: float) -> str:
    t = report["total"]
    pct = 100.0 * t["kept"] / t["read"] if t["read"] else 0.0
    removed = ", ".join(f"{r} {n}" for r, n in sorted(t["removed"].items(), key=lambda kv: -kv[1])) or "none"
    parts = [f"data run {cfg.name}: read {t['read']:,} records from {len(cfg.sources)} sources, kept "
             f"{t['kept']:,} ({pct:.1f}%); removed: {removed}"]
    if report.get("file_issues"):
        parts.append(f"{len(report['file_issues'])} file(s) gave no records")
    for stage, sets in report.get("stages", {}).items():
        parts.append(f"{stage}: {sum(s['tokens'] for s in sets.values()):,} tokens in {len(sets)} shard sets")
    if report.get("synth"):
        parts.append(f"synth: {report['synth']['examples']:,} examples")
    parts.append(f"{len(report['ran'])} steps ran, {len(report['skipped'])} skipped, {seconds:.1f} s; "
                 f"report: {Path(cfg.output_dir) / 'report.json'}")
    return "; ".join(parts)


__all__ = ["run_pipeline", "check_config", "STEP_ORDER"]
