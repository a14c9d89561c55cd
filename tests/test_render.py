"""One renderer: the corpus pipeline, `data tokenize` and tokenizer training turn the same record
into the same text, under the same template; `text_field: title` gives each title once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patentgpt.config import load_config
from patentgpt.data.jsonl import iter_jsonl
from patentgpt.data.pipeline.config import DataPipelineConfig
from patentgpt.data.pipeline.ingest import map_record, render
from patentgpt.data.tokenize import read_jsonl
from patentgpt.tokenizer.config import TokenizerTrainConfig, _documents

DEMO = Path(__file__).resolve().parents[1] / "patentgpt" / "assets" / "demo_corpus"
TEMPLATES = [{}, {"sections": ["abstract", "title", "claims", "cpc"], "markers": False, "headings": "auto"}]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("name, kind", [("patents_en.jsonl", "patent"), ("patents_zh.jsonl", "patent"),
                                        ("ip_law.jsonl", "text")])
def test_pipeline_and_tokenizer_training_render_alike(tmp_path, name, kind, template):
    cfg = load_config(DataPipelineConfig, data={
        "output_dir": str(tmp_path), "input_root": str(DEMO), "steps": ["ingest"],
        "sources": [{"name": "s", "paths": [name], "kind": kind, "template": template}]})
    src = cfg.sources[0]
    pipeline = []
    for _, record, _ in iter_jsonl(DEMO / name):
        meta, body = map_record(record, src)
        meta["declared_lang"] = record.get("lang")
        pipeline.append(render(meta, body, src))
    tok_cfg = TokenizerTrainConfig(output_dir=str(tmp_path / "tok"), inputs=[{"path": str(DEMO / name)}],
                                   template=template)
    training = list(_documents(DEMO / name, "text", True, [], tok_cfg.template))
    assert training == pipeline and len(set(pipeline)) == len(pipeline) > 30
    if template and kind == "patent":
        assert not any("<|title|>" in t for t in training)
        assert ("标题：" if "zh" in name else "Title: ") in training[0]


def titles_rendered(path: Path, n: int) -> tuple[list[str], list[str]]:
    titles = [rec["title"].strip() for _, rec, _ in iter_jsonl(path) if rec and rec.get("title")][:n]
    texts = list(_documents(path, "title", True, []))[:n]
    return titles, texts


def test_title_field_gives_each_title_once(shared_data):
    titles, texts = titles_rendered(shared_data / "patents" / "zh" / "cn_titles_ipc.jsonl", 500)
    assert texts == titles  # was "title\ntitle": titles weighed double


def test_title_field_once_on_demo_records(tmp_path):
    records = [json.loads(ln) for ln in (DEMO / "ip_law.jsonl").read_text(encoding="utf-8").splitlines()[:20]]
    titled = tmp_path / "titles.jsonl"
    titled.write_text("".join(json.dumps({"title": r["title"]}, ensure_ascii=False) + "\n"
                              for r in records if r.get("title")), encoding="utf-8")
    titles, texts = titles_rendered(titled, 20)
    assert texts == titles and titles
    assert list(read_jsonl([titled], "title")) == titles
