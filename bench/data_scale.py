"""Corpus pipeline scaling: throughput and peak memory per worker at 1x, 4x and 16x of a base
corpus, local executor against Ray, 1 and 2 workers.

The base ("1x") is the first ``--base-mb`` MB of real patent abstracts from ../shared/data
(PatentsView, English, plus the Chinese CPC abstracts; the demo corpus when absent), scaled down
from the whole shared corpus (~21 MB) so the 48 runs fit in about ten minutes on two cores. Scale
``s`` is ``s`` variants of the base, one gzip JSONL file each (the source is a glob): variant 0 is
the base, variant ``k`` replaces about a quarter of the words (Chinese: characters) by words
picked by a hash of ``(k, position)``, so variants share few 5-shingles (Jaccard ~0.15) and dedup
does not collapse them. Steps ingest -> clean -> lang -> filter -> dedup (every one runs as tasks
on the executor: ingest one per file); throughput is input MB over the seconds of all five.

Every run is a fresh process (Ray is started there before the clock starts; imports are paid by
every variant alike), variants interleaved per scale through bench/harness.py. ``bucket_docs``
is set to the documents of 1x so the number of dedup buckets grows with the input: each bucket
task then holds the same amount and the dedup stages' memory per worker stays flat.

    python bench/data_scale.py [--base-mb 1.0] [--scales 1,4,16] [--repeats 1] [--out runs/bench/data_scale.json]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness import compare, emit  # noqa: E402

SHARED = Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
STEPS = ("ingest", "clean", "lang", "filter", "dedup")
VARIANTS = {"local_1": ("local", 1), "local_2": ("local", 2), "ray_1": ("ray", 1), "ray_2": ("ray", 2)}
SWAP_WORDS = ("device", "member", "portion", "unit", "surface", "layer", "element", "assembly", "signal", "module",
              "housing", "channel", "circuit", "frame", "sensor", "valve", "region", "body", "plate", "shaft")
SWAP_HAN = "装置部件单元表面层元素组件信号模块壳体通道电路框架传感器阀区域主体板轴"
_WORD = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]")


def base_records(limit_bytes: int) -> list[dict]:
    """Real abstracts (canonical fields) up to about ``limit_bytes`` of JSON."""
    if (SHARED / "patents").is_dir():
        files = [(SHARED / "patents/zh/cn_cpc_abstracts.jsonl", "publication_number", "text", "zh"),
                 (SHARED / "patents/en/patentsview_abstracts.jsonl", "publication_number", "abstract", "en")]
    else:
        demo = REPO / "patentgpt/assets/demo_corpus"
        files = [(p, "id", "text", "auto") for p in sorted(demo.glob("*.jsonl"))]
    out, size = [], 0
    for path, id_key, text_key, lang in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                rec = {"id": str(row.get(id_key)), "title": row.get("title") or "", "abstract": row.get(text_key) or "",
                       "lang": row.get("lang") or lang}
                out.append(rec)
                size += len(json.dumps(rec, ensure_ascii=False).encode())
                if size >= limit_bytes:
                    return out
    return out


def _pick(k: int, i: int, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{k}:{i}".encode(), digest_size=4).digest(), "little") % n


def variant(text: str, k: int) -> str:
    """Variant ``k`` of a text: about every fourth word (Chinese: character) replaced, deterministically."""
    if k == 0:
        return text
    out, last, i = [], 0, 0
    for m in _WORD.finditer(text):
        if _pick(k, i, 4) == 0:
            out.append(text[last:m.start()])
            han = "\u4e00" <= m.group()[0] <= "\u9fff"
            out.append(SWAP_HAN[_pick(k + 7, i, len(SWAP_HAN))] if han else SWAP_WORDS[_pick(k + 7, i, len(SWAP_WORDS))])
            last = m.end()
        i += 1
    out.append(text[last:])
    return "".join(out)


def build_corpus(root: Path, base: list[dict], scale: int) -> tuple[Path, float]:
    """``scale`` gzip JSONL files (variants 0..scale-1); returns the folder and its uncompressed MB."""
    folder = root / f"x{scale}"
    folder.mkdir(parents=True, exist_ok=True)
    size = 0
    for k in range(scale):
        with gzip.open(folder / f"variant_{k:03d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as fh:
            for rec in base:
                row = {**rec, "id": f"{rec['id']}-v{k}", "title": variant(rec["title"], k),
                       "abstract": variant(rec["abstract"], k)}
                line = json.dumps(row, ensure_ascii=False) + "\n"
                size += len(line.encode())
                fh.write(line)
    return folder, size / 1e6


def child(spec: dict) -> None:
    """One measured pipeline run in this (fresh) process; prints its numbers as JSON."""
    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig
    from patentgpt.data.pipeline.runner import run_pipeline

    data = {"name": "scale", "output_dir": spec["out"], "input_root": spec["corpus"], "seed": 1,
            "num_proc": spec["workers"], "executor": spec["executor"], "partition_docs": spec["partition_docs"],
            "steps": list(STEPS),
            "sources": [{"name": "abstracts", "paths": ["*.jsonl.gz"], "kind": "patent",
                         "template": {"sections": ["title", "abstract"]}}],
            "dedup": {"bucket_docs": spec["bucket_docs"]}}
    if spec["executor"] == "ray":
        import ray

        ray.init(num_cpus=spec["workers"], include_dashboard=False, log_to_driver=False)
    import resource

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    cfg = load_config(DataPipelineConfig, data=data)
    t0, c0 = time.perf_counter(), cpu()
    report = run_pipeline(cfg, log=lambda _m: None)
    wall, cpu_s = time.perf_counter() - t0, cpu() - c0
    dedup = json.loads((Path(spec["out"]) / "dedup" / "stats.json").read_text())["extra"]
    print(json.dumps({"seconds": {s: v["seconds"] for s, v in report["steps"].items()}, "wall": wall, "cpu": cpu_s,
                      "memory": {s: v.get("memory") for s, v in report["steps"].items()},
                      "total": report["total"], "dedup": {k: dedup.get(k) for k in
                                                          ("docs", "buckets", "exact_dups", "near_dups",
                                                           "candidate_pairs")},
                      "docs_sha": hashlib.sha256((Path(spec["out"]) / "dedup" / "docs.jsonl").read_bytes()).hexdigest()}))


def run_child(spec: dict) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run([sys.executable, "-X", "utf8", __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-mb", type=float, default=1.0)
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--partition-docs", type=int, default=256)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))

    scales = [int(s) for s in args.scales.split(",")]
    base = base_records(int(args.base_mb * 1e6))
    results, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for scale in scales:
            corpus, mb = build_corpus(root / "corpus", base, scale)
            runs[scale] = {v: [] for v in VARIANTS}

            def make(name: str, scale=scale, corpus=corpus, mb=mb):
                executor, workers = VARIANTS[name]

                def run() -> tuple[float, float]:
                    spec = {"executor": executor, "workers": workers, "corpus": str(corpus),
                            "out": str(root / f"out_{scale}_{name}_{len(runs[scale][name])}"),
                            "partition_docs": args.partition_docs, "bucket_docs": len(base)}
                    res = run_child(spec)
                    runs[scale][name].append(res)
                    return mb, sum(res["seconds"][s] for s in STEPS)
                return run

            results[f"x{scale}"] = compare({v: make(v) for v in VARIANTS}, baseline="local_1",
                                           repeats=args.repeats, warmup=0, unit="MB")
            results[f"x{scale}"]["input_mb"] = round(mb, 2)
            results[f"x{scale}"]["docs"] = len(base) * scale
    mb = {scale: results[f"x{scale}"]["input_mb"] for scale in scales}
    emit({"scaling": results}, extra=summarize(runs, scales, len(base), mb, args), out=args.out)


def projection(table: list[dict], mb: dict, tb_mb: float = 1e6, cores_per_node: int = 64) -> dict:
    """Nodes and hours for 1 TB of text from the largest scale's measured rates: the per-core rate
    of the steps (one worker) and the 2-worker efficiency of the Ray executor. On a loaded machine
    the wall-clock per-core rate understates a dedicated core; MB per CPU-second of the inline run
    (a rate free of other jobs' contention) is given beside it, with the hours it implies."""
    top = max(r["scale"] for r in table)
    row = {r["variant"]: r for r in table if r["scale"] == top}
    work = {v: sum(r["seconds"][s] for s in STEPS) for v, r in row.items()}
    per_core = mb[top] / work["local_1"]
    eff = min(1.0, work["ray_1"] / work["ray_2"] / 2)
    cpu = row["local_1"].get("cpu_seconds_this_process")  # local_1 runs inline: all its work is this process's
    out = {"per_core_mb_per_s": round(per_core, 3), "ray_2_worker_efficiency": round(eff, 3),
           "core_hours_per_tb": round(tb_mb / per_core / 3600, 1)}
    rates = {"wall_clock_rate": per_core}
    if cpu:
        out["mb_per_cpu_second"] = round(mb[top] / cpu, 3)
        out["core_hours_per_tb_at_cpu_rate"] = round(tb_mb / (mb[top] / cpu) / 3600, 1)
        rates["cpu_second_rate"] = mb[top] / cpu
    out["hours_per_tb"] = {name: {f"{n}_nodes_x_{cores_per_node}_cores": round(tb_mb / (r * cores_per_node * n * eff)
                                                                             / 3600, 2) for n in (1, 8, 32)}
                           for name, r in rates.items()}
    return out


def summarize(runs: dict, scales: list[int], base_docs: int, mb: dict, args) -> dict:
    table, memory, identical = [], {}, {}
    for scale in scales:
        shas = {r["docs_sha"] for v in runs[scale].values() for r in v}
        identical[f"x{scale}"] = len(shas) == 1
        for name, rs in runs[scale].items():
            r = rs[-1]
            dedup_mem = r["memory"]["dedup"]
            row = {"scale": scale, "variant": name, "docs": base_docs * scale, "cpu_seconds_this_process": r.get("cpu"),
                   "seconds": {s: round(r["seconds"][s], 2) for s in STEPS},
                   "dedup_buckets": r["dedup"]["buckets"], "kept": r["total"]["kept"],
                   "removed": r["total"]["removed"],
                   "peak_rss_mb_per_worker": {st: v["peak_rss_mb_max"] for st, v in dedup_mem["stages"].items()},
                   "map_steps_peak_rss_mb": max(r["memory"][s]["worker_peak_rss_mb"] for s in ("clean", "lang", "filter")),
                   "driver_peak_rss_mb": dedup_mem["driver_peak_rss_mb"]}
            table.append(row)
            memory.setdefault(name, {})[f"x{scale}"] = row["peak_rss_mb_per_worker"]
    flat = {}
    for name, by_scale in memory.items():
        lo, hi = by_scale[f"x{scales[0]}"], by_scale[f"x{scales[-1]}"]
        flat[name] = {st: round(hi[st] / lo[st], 3) for st in lo}
    return {"projection_1tb": projection(table, mb), "base": {"docs": base_docs, "mb": args.base_mb,
                     "data": str(SHARED / "patents") if (SHARED / "patents").is_dir() else "demo corpus",
                     "note": "1x is scaled down from the whole shared corpus (~21 MB) to keep the run near 10 minutes"},
            "partition_docs": args.partition_docs, "bucket_docs": base_docs,
            "runs": table, "dedup_peak_rss_ratio_largest_vs_smallest_scale": flat,
            "dedup_docs_identical_across_variants": identical}


if __name__ == "__main__":
    main()
