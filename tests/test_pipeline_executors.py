"""The corpus pipeline on its two executors (local processes, a local Ray of 2 CPUs), sharded
dedup against its single-bucket run, and resume after a SIGKILLed worker or driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _pipeline_support import EXACT_DUP, NEAR_DUP_EN, NEAR_DUP_ZH, fixture_config
from patentgpt.data.pipeline.executor import FAULT_DIR_ENV
from patentgpt.data.pipeline.runner import run_pipeline

STEPS = ("ingest", "clean", "lang", "filter", "dedup")
FILES = ("docs.jsonl", "rejects.jsonl", "dedup_clusters.jsonl")
TESTS = Path(__file__).resolve().parent


def quiet(_msg: str) -> None:
    pass


def outputs(out: Path) -> dict:
    """Every document, rejects and cluster file the record steps wrote, as bytes."""
    return {f"{s}/{f}": (out / s / f).read_bytes() for s in STEPS for f in FILES if (out / s / f).is_file()}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """A fault-injection directory, in the environment before Ray starts so its workers see it."""
    path = tmp_path_factory.mktemp("faults")
    old = os.environ.get(FAULT_DIR_ENV)
    os.environ[FAULT_DIR_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(FAULT_DIR_ENV, None)
    else:
        os.environ[FAULT_DIR_ENV] = old


@pytest.fixture(scope="module")
def local_ray(faults):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The reference: the local executor, one process, default partitioning (one partition)."""
    out = tmp_path_factory.mktemp("local") / "run"
    report = run_pipeline(fixture_config(out), log=quiet)
    return out, report


def test_ray_and_local_executors_write_identical_bytes_and_counts(local_run, local_ray, tmp_path):
    out, report = local_run
    ray_out = tmp_path / "ray"
    # small partitions and buckets, so the documents really are spread over many tasks and workers
    ray_report = run_pipeline(fixture_config(ray_out, executor="ray", partition_docs=4,
                                             dedup={"bucket_docs": 5}), log=quiet)
    assert outputs(out) == outputs(ray_out)
    assert len(outputs(out)) == 11
    assert ray_report["total"] == report["total"] and ray_report["sources"] == report["sources"]
    dedup = ray_report["steps"]["dedup"]["memory"]
    assert dedup["executor"] == "ray" and dedup["workers"] == 2
    assert dedup["stages"]["sign"]["partitions"] == 6 and dedup["stages"]["exact"]["partitions"] == 5
    assert set(dedup["stages"]) == {"sign", "exact", "bands", "verify"}
    assert all(0 < s["peak_rss_mb_max"] < 4096 for s in dedup["stages"].values())
    stats = json.loads((ray_out / "dedup" / "stats.json").read_text())["extra"]
    assert stats["buckets"] == 5 and stats["exact_dups"] == 1 and stats["near_dups"] == 2
    removed = {json.loads(line)["id"]: json.loads(line)["duplicate_of"]["id"]
               for line in (ray_out / "dedup" / "rejects.jsonl").read_text().splitlines()}
    assert removed == dict([EXACT_DUP, NEAR_DUP_EN, NEAR_DUP_ZH])
    assert not (ray_out / "dedup" / "parts").exists() and not (ray_out / ".dedup.tmp").exists()


def test_local_partitions_and_buckets_do_not_change_the_output(local_run, tmp_path):
    out, _ = local_run
    other = tmp_path / "p2"
    report = run_pipeline(fixture_config(other, num_proc=2, partition_docs=3, dedup={"bucket_docs": 2}), log=quiet)
    assert outputs(other) == outputs(out)
    mem = report["steps"]["filter"]["memory"]
    assert mem["executor"] == "local" and mem["workers"] == 2 and mem["stages"]["map"]["partitions"] == 8
    assert 1 <= mem["stages"]["map"]["workers"] <= 2  # pool processes (started on demand) that ran partitions


def test_a_killed_ray_worker_is_retried_and_the_output_is_unchanged(local_run, local_ray, faults, tmp_path):
    out, _ = local_run
    for name in ("worker-map-1", "worker-sign-2", "worker-bands-0"):
        (faults / name).touch()
    ray_out = tmp_path / "ray_killed"
    report = run_pipeline(fixture_config(ray_out, executor="ray", partition_docs=4), log=quiet)
    assert not list(faults.iterdir())  # every planted fault fired: three workers died by SIGKILL
    assert outputs(ray_out) == outputs(out)
    assert report["total"] == json.loads((out / "report.json").read_text())["total"]


def test_a_killed_driver_resumes_from_its_finished_partitions(local_run, tmp_path):
    out, _ = local_run
    run = tmp_path / "killed"
    faults = tmp_path / "driver_faults"
    faults.mkdir()
    (faults / "driver-sign-2").touch()  # the driver dies after the third signature partition
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from _pipeline_support import fixture_config; "
            "from patentgpt.data.pipeline.runner import run_pipeline; "
            f"run_pipeline(fixture_config({str(run)!r}, partition_docs=4), log=print)")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, FAULT_DIR_ENV: str(faults)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run / "filter" / "DONE").is_file() and not (run / "dedup").exists()
    assert len(list((run / ".dedup.tmp" / "parts" / "sign").glob("*.done.json"))) == 3
    lines: list[str] = []
    report = run_pipeline(fixture_config(run, partition_docs=4), log=lines.append)
    assert report["ran"] == ["dedup"]
    assert "[dedup] running (resuming: 3 finished partitions kept)" in lines
    assert report["steps"]["dedup"]["memory"]["stages"]["sign"]["resumed"] == 3
    assert outputs(run) == outputs(out)
    # a changed config does not reuse partitions of the old one
    (faults / "driver-sign-0").touch()
    proc = subprocess.run([sys.executable, "-c", code.replace("partition_docs=4", "partition_docs=4, seed=8")],
                          env={**os.environ, FAULT_DIR_ENV: str(faults)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    lines.clear()
    run_pipeline(fixture_config(run, partition_docs=4, seed=9), log=lines.append)
    assert not any("resuming" in line for line in lines)


def test_glob_of_gzip_zstd_and_parquet_inputs_reads_like_plain_jsonl(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from _pipeline_support import FIX
    from patentgpt.data.pipeline.docstore import iter_docs

    rows = [json.loads(line) for line in (FIX / "patents_zh.jsonl").read_text(encoding="utf-8").splitlines()]
    thirds = [rows[0::3], rows[1::3], rows[2::3]]
    src = tmp_path / "in"
    src.mkdir()
    with gzip.open(src / "a.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in thirds[0])
    (src / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in thirds[1]).encode()))
    pq.write_table(pa.Table.from_pylist(thirds[2]), src / "c.parquet")

    def texts(paths, out):
        data = {"output_dir": str(out), "input_root": str(tmp_path), "steps": ["ingest", "clean"], "sources": [
            {"name": "zh", "paths": paths, "lang": "zh", "template": {"sections": ["title", "abstract", "claims"]}}]}
        from patentgpt.config import load_config
        from patentgpt.data.pipeline.config import DataPipelineConfig

        report = run_pipeline(load_config(DataPipelineConfig, data=data), log=quiet)
        return sorted(d["text"] for d in iter_docs(out / "clean" / "docs.jsonl")), report

    (tmp_path / "plain.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    mixed, report = texts(["in/*.jsonl.*", "in/*.parquet"], tmp_path / "mixed")
    plain, _ = texts(["plain.jsonl"], tmp_path / "plain")
    assert len(mixed) == report["total"]["read"] - sum(report["total"]["removed"].values()) > 3
    assert mixed == plain


def test_a_killed_local_worker_stops_the_step_and_the_rerun_resumes(local_run, faults, tmp_path):
    from patentgpt.data.pipeline.executor import WorkerLost

    out, _ = local_run
    run = tmp_path / "local_killed"
    (faults / "worker-sign-3").touch()
    cfg = fixture_config(run, num_proc=2, partition_docs=4)
    with pytest.raises(WorkerLost):
        run_pipeline(cfg, log=quiet)
    assert not (faults / "worker-sign-3").exists() and not (run / "dedup").exists()
    lines: list[str] = []
    report = run_pipeline(cfg, log=lines.append)
    assert report["ran"] == ["dedup"] and any("resuming" in line for line in lines)
    assert outputs(run) == outputs(out)


def test_ingest_read_as_parallel_file_tasks_equals_the_sequential_read(local_run, tmp_path):
    """The pipeline reads a source's files as tasks (one per file, renumbering id-less records); the
    sequential reader (run_ingest without an executor, as sources with group_by use) gives the same bytes."""
    from patentgpt.data.pipeline.docstore import JsonlWriter
    from patentgpt.data.pipeline.ingest import run_ingest
    from patentgpt.data.pipeline.report import Ledger

    out, report = local_run
    cfg = fixture_config(tmp_path / "seq")
    ledger = Ledger(tmp_path / "rejects.jsonl")
    with JsonlWriter(tmp_path / "docs.jsonl") as writer:
        extra = run_ingest(cfg, tmp_path, ledger, writer)
    ledger.close()
    assert (tmp_path / "docs.jsonl").read_bytes() == (out / "ingest" / "docs.jsonl").read_bytes()
    assert (tmp_path / "rejects.jsonl").read_bytes() == (out / "ingest" / "rejects.jsonl").read_bytes()
    stats = json.loads((out / "ingest" / "stats.json").read_text())
    assert extra["files"] == stats["extra"]["files"] and len(extra["files"]) == 5
    assert ledger.stats() == stats["ledger"] and ledger.stats()["file_issues"]  # empty.jsonl is reported
    # records without an id are numbered across the files of their source: tasks renumber them in file order
    from _pipeline_support import FIX

    law = [json.loads(line) for line in (FIX / "patents_zh.jsonl").read_text(encoding="utf-8").splitlines()]
    for k in range(3):
        rows = [{key: v for key, v in r.items() if key != "id"} for r in law[k::3]]
        (tmp_path / f"law_{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert len(law) >= 6
    data = {"output_dir": str(tmp_path / "law_run"), "input_root": str(tmp_path), "steps": ["ingest"], "num_proc": 2,
            "sources": [{"name": "law", "paths": ["law_*.jsonl"], "lang": "zh"}]}
    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig

    law_cfg = load_config(DataPipelineConfig, data=data)
    run_pipeline(law_cfg, log=quiet)
    with JsonlWriter(tmp_path / "sequential_read.jsonl") as writer:
        run_ingest(law_cfg, tmp_path, Ledger(None), writer)
    seq = (tmp_path / "sequential_read.jsonl").read_bytes()
    assert seq == (tmp_path / "law_run" / "ingest" / "docs.jsonl").read_bytes()
    ids = [json.loads(line)["id"] for line in seq.decode().splitlines()]
    assert ids == [f"law:{n}" for n in range(1, len(law) + 1)] and len(ids) > 3
