"""Ingest: bad records are counted and set aside with reason and location, field mapping works
for JSONL, CSV, JSON and parquet, structured patents render in English and Chinese."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _pipeline_support import FIX, PLANTED_BAD, fixture_config
from patentgpt.config import ConfigError, load_config
from patentgpt.data.pipeline.config import DataPipelineConfig, SourceSpec, TemplateSpec
from patentgpt.data.pipeline.docstore import JsonlWriter, iter_docs
from patentgpt.data.pipeline.ingest import map_record, run_ingest, split_claims
from patentgpt.data.pipeline.report import Ledger
from patentgpt.data.render import render_patent


def ingest(cfg: DataPipelineConfig, tmp: Path) -> tuple[list[dict], list[dict], dict]:
    ledger = Ledger(tmp / "rejects.jsonl")
    with JsonlWriter(tmp / "docs.jsonl") as writer:
        run_ingest(cfg, tmp, ledger, writer)
    ledger.close()
    rejects = [json.loads(line) for line in open(tmp / "rejects.jsonl", encoding="utf-8")]
    return list(iter_docs(tmp / "docs.jsonl")), rejects, ledger.stats()


def one_source(tmp: Path, **src) -> DataPipelineConfig:
    return load_config(DataPipelineConfig, data={"output_dir": str(tmp / "out"), "input_root": str(tmp),
                                                 "steps": ["ingest"], "sources": [{"name": "s", **src}]})


def test_bad_lines_are_counted_with_reason_and_location(tmp_path):
    cfg = fixture_config(tmp_path / "out")
    docs, rejects, stats = ingest(cfg, tmp_path)
    en = Path(FIX / "patents_en.jsonl")
    got = {int(r["loc"].rsplit(":", 1)[1]): r["reason"] for r in rejects
           if r["source"] == "patents_en" and r["loc"].startswith(str(en))}
    assert got == PLANTED_BAD
    # the empty file is reported as a file issue, and the run went on to the other sources
    assert [(f["path"], f["reason"]) for f in stats["file_issues"]] == [(str(FIX / "empty.jsonl"), "empty_file")]
    s = stats["sources"]["patents_en"]
    assert s["in"] == 16 and s["kept"] == 10 and sum(s["removed"].values()) == 6
    assert {d["source"] for d in docs} == {"patents_en", "patents_zh", "ip_law", "csv_patents"}
    for d in docs:  # the document contract
        assert set(d) == {"id", "source", "loc", "lang", "text", "meta"}
        assert d["text"].strip()


def test_claims_string_or_list_and_rendering(tmp_path):
    cfg = fixture_config(tmp_path / "out")
    docs, _, _ = ingest(cfg, tmp_path)
    by_id = {d["id"]: d for d in docs}
    listed, joined = by_id["FX-EN-001"], by_id["FX-EN-003"]  # FX-EN-003's claims are one string
    assert isinstance(joined["meta"]["claims"], list) and len(joined["meta"]["claims"]) > 1
    assert joined["meta"]["claims"][0].startswith("1.") and joined["meta"]["claims"][1].startswith("2.")
    text = listed["text"]
    assert text.startswith("<|title|>" + listed["meta"]["title"])
    assert text.index("<|abstract|>") < text.index("<|claims|>") < text.index("<|ipc|>")
    zh = by_id["FX-ZH-001"]["text"]  # headings: auto -> Chinese headings
    assert zh.startswith("<|title|>标题：") and "<|claims|>权利要求书：\n1." in zh
    assert split_claims("1. A widget. 2. The widget of claim 1, red.") == ["1. A widget.", "2. The widget of claim 1, red."]
    assert split_claims("1.一种装置。2.根据权利要求1所述的装置。") == ["1.一种装置。", "2.根据权利要求1所述的装置。"]


def test_render_template_order_markers_and_headings():
    meta = {"title": "Widget", "abstract": "A widget.", "claims": ["1. A widget.", "2. The widget of claim 1."],
            "ipc": ["A01B 1/00", "B02C 2/00"]}
    plain = render_patent(meta, TemplateSpec(sections=["abstract", "title"], markers=False), "en")
    assert plain == "A widget.\nWidget"
    en = render_patent(meta, TemplateSpec(headings="en"), "en")
    assert en.splitlines()[:3] == ["<|title|>Title: Widget", "<|abstract|>Abstract: A widget.", "<|claims|>Claims:"]
    assert en.endswith("<|ipc|>IPC: A01B 1/00; B02C 2/00")
    zh = render_patent(meta, TemplateSpec(markers=False, headings="zh"), "zh")
    assert zh.startswith("标题：Widget\n摘要：A widget.\n权利要求书：\n1. A widget.")


def test_csv_field_mapping(tmp_path):
    cfg = fixture_config(tmp_path / "out")
    docs, _, _ = ingest(cfg, tmp_path)
    csv_docs = [d for d in docs if d["source"] == "csv_patents"]
    assert [d["id"] for d in csv_docs] == ["CSV-EN-0011", "CSV-EN-0012", "CSV-EN-0013", "CSV-EN-0014"]
    d = csv_docs[0]
    assert d["loc"].endswith("patents.csv:1")
    assert d["meta"]["title"].startswith("Precast concrete wall panel")
    assert len(d["meta"]["claims"]) > 1 and d["meta"]["claims"][1].startswith("2.")
    assert all(" " in code or "/" in code for code in d["meta"]["ipc"]) and len(d["meta"]["ipc"]) >= 1
    assert d["meta"]["date"].count("-") == 2


def test_parquet_and_json_field_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "pn": ["P-1", "P-2", "P-3"],
        "name": ["Rotary valve", "Heat exchanger", None],
        "summary": ["A rotary valve with a ceramic disc seals at 10 bar.", "A plate heat exchanger.", None],
        "claim_list": [["1. A valve.", "2. The valve of claim 1."], ["1. An exchanger."], None],
        "codes": [["F16K 3/08"], ["F28D 9/00"], []],
    })
    pq.write_table(table, tmp_path / "p.parquet")
    fields = {"id": "pn", "title": "name", "abstract": "summary", "claims": "claim_list", "ipc": "codes"}
    docs, rejects, _ = ingest(one_source(tmp_path, paths="p.parquet", fields=fields, lang="en"), tmp_path)
    assert [d["id"] for d in docs] == ["P-1", "P-2"]
    assert docs[0]["meta"]["claims"] == ["1. A valve.", "2. The valve of claim 1."]
    assert docs[0]["meta"]["ipc"] == ["F16K 3/08"]
    assert [(r["reason"], r["loc"].rsplit(":", 1)[1]) for r in rejects] == [("missing_field", "3")]

    rows = {"data": [{"no": 1, "t": "Gear pump", "a": "A gear pump with helical gears."},
                     {"no": 2, "t": ["not", 3], "a": "mixed types fall back to Python's json"}]}
    (tmp_path / "j.json").write_text(json.dumps(rows))
    docs, rejects, _ = ingest(one_source(tmp_path, paths="j.json", json_field="data", kind="text",
                                         fields={"id": "no", "title": "t", "text": "a"}), tmp_path)
    assert [d["id"] for d in docs] == ["1"] and docs[0]["text"] == "Gear pump\nA gear pump with helical gears."
    assert [r["reason"] for r in rejects] == ["wrong_type"]


def test_csv_with_bad_bytes_falls_back_and_counts_rows(tmp_path):
    raw = b"id,text\n1,good row one\n2,caf\xe9 latin-1\n3,good row three\n4,too,many,cells\n"
    (tmp_path / "bad.csv").write_bytes(raw)
    docs, rejects, stats = ingest(one_source(tmp_path, paths="bad.csv", kind="text"), tmp_path)
    assert [d["id"] for d in docs] == ["1", "3"]
    assert [(r["reason"], r["loc"].rsplit(":", 1)[1]) for r in rejects] == [("undecodable_utf8", "2"),
                                                                             ("malformed_row", "4")]
    assert stats["sources"]["s"] == {"in": 4, "kept": 2, "removed": {"malformed_row": 1, "undecodable_utf8": 1}}


def test_group_by_joins_records_and_counts_them(tmp_path):
    lines = [{"pid": "A", "s": "1.一种装置，包括："}, {"pid": "A", "s": "壳体；以及"}, {"pid": "B", "s": "1.一种方法。"}]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines))
    cfg = one_source(tmp_path, paths="g.jsonl", kind="text", lang="zh", group_by="pid",
                     fields={"id": "pid", "text": "s"})
    docs, _, stats = ingest(cfg, tmp_path)
    assert [(d["id"], d["text"], d["meta"].get("records")) for d in docs] == [
        ("A", "1.一种装置，包括：\n壳体；以及", 2), ("B", "1.一种方法。", 1)]
    assert stats["sources"]["s"] == {"in": 3, "kept": 3, "removed": {}}


def test_required_fields_and_map_record_types():
    src = SourceSpec(name="s", paths=["x"], required=["abstract"])
    with pytest.raises(ValueError, match="abstract"):
        map_record({"title": "only a title"}, src)
    meta, body = map_record({"id": 7, "title": "T", "abstract": "A.", "ipc": "A01B 1/00; A01B 3/00",
                             "date": 1887, "lang": "zh-CN"}, src)
    assert meta["native_id"] == "7" and meta["ipc"] == ["A01B 1/00", "A01B 3/00"] and meta["date"] == "1887"
    assert meta["declared_lang"] == "zh" and body is None


def test_missing_input_file_is_a_config_error(tmp_path):
    cfg = one_source(tmp_path, paths="nope.jsonl")
    from patentgpt.data.pipeline.runner import check_config

    with pytest.raises(ConfigError, match=r"sources\.0\.paths"):
        check_config(cfg)
