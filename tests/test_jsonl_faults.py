"""Inputs that used to crash or mislead the readers (issue #16): a BOM, gzip/zstd files under any
name, deep nesting, lone surrogates, non-objects, bad bytes, a truncated compressed stream. Each is
planted among real demo-corpus records and read by the one JSONL reader and by the stages on it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from patentgpt.data.jsonl import iter_jsonl, read_json_records
from patentgpt.data.pipeline.docstore import JsonlWriter, iter_docs

DEMO = Path(__file__).resolve().parents[1] / "patentgpt" / "assets" / "demo_corpus"


def demo_lines(n: int, name: str = "patents_en.jsonl") -> list[bytes]:
    return (DEMO / name).read_bytes().splitlines()[:n]


def planted(tmp: Path) -> tuple[Path, dict[int, str], list[dict]]:
    """A JSONL file of real records with faults planted between them: (path, {line: reason}, good records)."""
    good = demo_lines(4)
    rec = json.loads(good[1])
    rec["title"] = rec["title"] + " \ud800"
    surrogate_line = json.dumps(rec, ensure_ascii=True).encode()  # holds the escape \ud800: valid JSON
    lines = [
        b"\xef\xbb\xbf" + good[0],               # 1: BOM before the first record
        surrogate_line,                          # 2: valid JSON with a lone surrogate
        b"[" * 100_000 + b"]" * 100_000,         # 3: RecursionError in json
        b"[1, 2, 3]",                            # 4: not an object
        b"",                                     # 5: blank: skipped, not counted
        b"\xff\xfe" + good[2][2:],               # 6: not UTF-8
        good[2],                                 # 7
        good[3][: len(good[3]) // 2],            # 8: torn line
    ]
    path = tmp / "planted.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    bad = {3: "too_deeply_nested", 4: "not_an_object", 6: "undecodable_utf8", 8: "malformed_json"}
    return path, bad, [json.loads(good[0]), None, json.loads(good[2])]


def test_reader_sets_aside_each_planted_fault_with_its_reason(tmp_path):
    path, bad, good = planted(tmp_path)
    rows = list(iter_jsonl(path))
    assert {n: r for n, _, r in rows if r} == bad
    kept = {n: rec for n, rec, r in rows if r is None}
    assert sorted(kept) == [1, 2, 7]
    assert kept[1] == good[0]  # the BOM no longer costs the first record
    assert kept[7] == good[2]
    assert kept[2]["title"].endswith("\ufffd") and "\ud800" not in kept[2]["title"]
    with JsonlWriter(tmp_path / "docs.jsonl") as w:  # the store that used to raise UnicodeEncodeError
        w.write_many(kept.values())
    assert [d["id"] for d in iter_docs(tmp_path / "docs.jsonl")] == [kept[n]["id"] for n in (1, 2, 7)]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_files_are_read_by_content_not_name(tmp_path, codec):
    raw = (DEMO / "patents_zh.jsonl").read_bytes()
    packed = gzip.compress(raw) if codec == "gzip" else zstandard.ZstdCompressor().compress(raw)
    disguised = tmp_path / "looks_plain.jsonl"
    disguised.write_bytes(packed)
    plain = [(n, rec) for n, rec, _ in iter_jsonl(DEMO / "patents_zh.jsonl")]
    got = list(iter_jsonl(disguised))
    assert all(r is None for _, _, r in got)  # no phantom undecodable_utf8 records
    assert [(n, rec) for n, rec, _ in got] == plain and len(plain) == raw.count(b"\n")
    truncated = tmp_path / "cut.jsonl"
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(OSError, match="truncated or corrupt") as err:
        list(iter_jsonl(truncated))
    assert str(truncated) in str(err.value)


def test_json_array_reader_handles_bom_gzip_and_rejects_non_lists(tmp_path):
    items = [json.loads(ln) for ln in demo_lines(3, "ip_law.jsonl")]
    arr = tmp_path / "arr.json"
    arr.write_bytes(gzip.compress(b"\xef\xbb\xbf" + json.dumps([*items, 7]).encode()))
    assert [(n, r) for n, _, r in read_json_records(arr)] == [(1, None), (2, None), (3, None), (4, "not_an_object")]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": items}))
    assert [rec for _, rec, _ in read_json_records(wrapped, field="data")] == items
    with pytest.raises(ValueError, match="not a list"):
        list(read_json_records(wrapped, field="rows"))


def test_ingest_counts_planted_faults_and_reads_disguised_gzip(tmp_path):
    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig
    from patentgpt.data.pipeline.ingest import run_ingest
    from patentgpt.data.pipeline.report import Ledger

    path, bad, _ = planted(tmp_path)
    (tmp_path / "zh.jsonl").write_bytes(gzip.compress((DEMO / "patents_zh.jsonl").read_bytes()))
    n_zh = (DEMO / "patents_zh.jsonl").read_bytes().count(b"\n")
    cfg = load_config(DataPipelineConfig, data={
        "output_dir": str(tmp_path / "out"), "input_root": str(tmp_path), "steps": ["ingest"],
        "sources": [{"name": "en", "paths": [path.name]}, {"name": "zh", "paths": ["zh.jsonl"]}]})
    ledger = Ledger(tmp_path / "rejects.jsonl")
    with JsonlWriter(tmp_path / "docs.jsonl") as writer:
        run_ingest(cfg, tmp_path, ledger, writer)
    ledger.close()
    stats = ledger.stats()
    assert stats["sources"]["en"]["kept"] == 3 and stats["sources"]["en"]["removed"] == {
        r: 1 for r in bad.values()}
    assert stats["sources"]["zh"] == {**stats["sources"]["zh"], "in": n_zh, "kept": n_zh}
    assert not stats["file_issues"]
    docs = list(iter_docs(tmp_path / "docs.jsonl"))
    assert len(docs) == 3 + n_zh and all(d["text"].strip() for d in docs)


def test_tokenize_reader_and_question_sets_use_the_same_reader(tmp_path):
    from patentgpt.data.pipeline.synth import SynthStats, load_qa_files
    from patentgpt.data.tokenize import read_jsonl

    path, bad, _ = planted(tmp_path)
    rejects: list = []
    texts = list(read_jsonl([path], rejects=rejects))
    assert len(texts) == 3 and {ln: r for _, ln, r in rejects} == bad
    stats = SynthStats()
    items = load_qa_files([path], stats=stats)
    assert len(items) == 3
    assert sum(stats.skipped["qa"].values()) == len(bad)
