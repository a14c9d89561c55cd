"""Long-document mixtures (length_buckets) on the real long patents of ../shared/data: documents land
in their length bucket, long ones are up-weighted by the configured factor, nothing disappears
without a counted reason, and the data card shows the length distribution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from patentgpt.config import ConfigError, apply_overrides, load_config, load_yaml_tree
from patentgpt.data.pipeline.config import DataPipelineConfig
from patentgpt.data.pipeline.runner import run_pipeline
from patentgpt.data.shards import ShardSet

REPO = Path(__file__).resolve().parents[1]


def _tree(shared_data: Path, out: Path, tokenizer: Path) -> dict:
    tree = load_yaml_tree(REPO / "configs/data/shared_patents.yaml")
    tree["sources"] = [s for s in tree["sources"] if s["name"] in ("historical_ocr", "uspto_fulltext")]
    for s in tree["sources"]:
        s["max_records"] = 150
    tree.update(input_root=str(shared_data), output_dir=str(out), num_proc=1, steps=["ingest", "mixtures", "card"])
    tree["mixtures"] = {"tokenizer": str(tokenizer), "stages": {"stage2": {"sources": [
        {"source": "historical_ocr", "weight": 2.0,
         "length_buckets": [{"min_tokens": 3000, "weight": 4}, {"min_tokens": 8000, "weight": 0}]},
        {"source": "uspto_fulltext", "weight": 1.0, "max_chars": 60000},
    ]}}}
    return tree


@pytest.fixture(scope="module")
def long_run(shared_data, ip_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("long_mix") / "run"
    cfg = load_config(DataPipelineConfig, data=_tree(shared_data, out, ip_tokenizer_dir))
    return out, run_pipeline(cfg, log=lambda s: None)


def test_length_buckets_split_and_up_weight_long_documents(long_run):
    out, report = long_run
    stage = out / "mixtures" / "stage2"
    stats = json.loads((out / "mixtures" / "stats.json").read_text())["extra"]["stages"]["stage2"]
    ocr = stats["historical_ocr"]
    # every document the source kept is in exactly one bucket or set aside with its reason
    kept = report["sources"]["historical_ocr"]["kept"]
    assert kept == 150 - sum(report["sources"]["historical_ocr"]["removed"].values())
    assert sum(b["docs"] for b in ocr["buckets"].values()) == kept
    assert ocr["docs"] + sum(ocr["set_aside"].values()) == kept
    assert ocr["set_aside"] == {"length_bucket_weight_0": ocr["buckets"]["len8000"]["docs"]} != {"length_bucket_weight_0": 0}
    assert ocr["buckets"]["len0"]["docs"] > 10 and ocr["buckets"]["len3000"]["docs"] > 10
    for name, b in ocr["buckets"].items():
        if b["weight"] == 0:
            assert not b["stored"] and not (stage / "historical_ocr" / name).exists()
            continue
        lens = ShardSet(stage / "historical_ocr" / name).doc_lengths()
        assert len(lens) == b["docs"] and int(lens.sum()) == b["tokens"]
        assert lens.min() >= b["min_tokens"] and (b["max_tokens"] is None or lens.max() < b["max_tokens"])
    us = stats["uspto_fulltext"]
    assert us["docs"] + us["set_aside"].get("above_max_chars", 0) == report["sources"]["uspto_fulltext"]["kept"]
    assert us["set_aside"]["above_max_chars"] > 0
    # mixture weights: per token, len3000 is sampled 4x as often as len0; the entry keeps its weight 2
    mix = yaml.safe_load((stage / "mixture.yaml").read_text())
    rows = {r["name"]: r for r in mix["sources"]}
    assert set(rows) == {"historical_ocr_len0", "historical_ocr_len3000", "uspto_fulltext"}
    rate = {k: rows[f"historical_ocr_{k}"]["weight"] / ocr["buckets"][k]["tokens"] for k in ("len0", "len3000")}
    assert rate["len3000"] == pytest.approx(4 * rate["len0"])
    assert rows["historical_ocr_len0"]["weight"] + rows["historical_ocr_len3000"]["weight"] == pytest.approx(2.0)
    assert rows["uspto_fulltext"]["weight"] == 1.0 and rows["historical_ocr_len3000"]["path"] == "historical_ocr/len3000"
    # the step's record of a bucketed set carries the weight of its bucket rows together
    assert ocr["weight"] == pytest.approx(2.0) and us["weight"] == 1.0


def test_card_shows_the_length_distribution_stored_and_sampled(long_run):
    out, _ = long_run
    card = json.loads((out / "card" / "data_card.json").read_text())
    dist = card["length_distribution"]["stage2"]
    assert sum(dist["stored_share"]) == pytest.approx(1.0) and sum(dist["sampled_share"]) == pytest.approx(1.0)
    long_bins = [i for i, b in enumerate(dist["bins"]) if b.startswith("4,096")]
    assert sum(dist["sampled_share"][i] for i in long_bins) > sum(dist["stored_share"][i] for i in long_bins)
    md = (out / "card" / "data_card.md").read_text()
    assert "Length buckets" in md and "historical_ocr/len3000" in md and "sampled share" in md
    assert "length_bucket_weight_0" in md and "above_max_chars" in md
    for key in ("tokens_stage2", "share_stage2"):
        assert (out / "card" / card["images"][key]).stat().st_size > 0


def test_length_bucket_config_errors_name_the_key(tmp_path):
    base = {"name": "x", "output_dir": str(tmp_path), "sources": [{"name": "a", "paths": ["a.jsonl"]}],
            "steps": ["ingest"]}
    bad = {**base, "mixtures": {"stages": {"s": {"sources": [
        {"source": "a", "weight": 1, "length_buckets": [{"min_tokens": 4096, "weight": 4}, {"min_tokens": 1024,
                                                                                            "weight": 2}]}]}}}}
    with pytest.raises(ConfigError, match="length_buckets"):
        load_config(DataPipelineConfig, data=bad)
    typo = apply_overrides(bad, ["mixtures.stages.s.sources=[{source: a, weight: 1, length_buckets: "
                                 "[{min_token: 4096, weight: 4}]}]"])
    with pytest.raises(ConfigError, match="min_token"):
        load_config(DataPipelineConfig, data=typo)
