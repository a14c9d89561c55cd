"""bench/report.py: the README's training-benchmark table is the benchmarks' JSON (bench/results/)."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402


def test_readme_block_is_rendered_from_committed_results():
    results = sorted(report.RESULTS.glob("train_throughput*.json"))
    assert results, "bench/results/train_throughput_*.json are committed"
    assert report.readme_block(report.README.read_text(encoding="utf-8")) == report.block()


def test_table_has_every_variant_and_ratio_of_the_json():
    docs = [json.loads(p.read_text()) for p in sorted(report.RESULTS.glob("train_throughput*.json"))]
    text = "\n".join(report.train_table(docs))
    for doc in docs:
        for key, run in doc["runs"].items():
            assert key in text
            if run["baseline"] != "trainer_packed":
                continue  # a padding-only mix: its own table
            for name, ratio in run["ratio_vs_baseline"].items():
                assert f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" in text, (key, name)
            assert f"{run['tokens_per_s']['patentgpt']:.0f}" in text


def test_other_benchmarks_block_is_rendered_from_their_json():
    """Every comparison of every other committed bench/results/*.json is a row of the README's block."""
    text = report.README.read_text(encoding="utf-8")
    assert report.readme_block(text, report.ALL_START, report.ALL_END) == report.all_block()
    others = [p for p in sorted(report.RESULTS.glob("*.json")) if not p.name.startswith("train_throughput")]
    assert others, "the other benchmarks' JSON are committed"
    rendered = report.all_block()
    for p in others:
        for _, c in report.comparisons(json.loads(p.read_text())):
            for r in c["ratio_vs_baseline"].values():
                assert f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}), {r['n']}" in rendered, p.name


def test_comparisons_are_found_wherever_a_benchmark_nests_them():
    cmp = {"unit": "texts", "baseline": "b", "ratio_vs_baseline": {"a": {"median": 1.5, "min": 1.2, "max": 1.9, "n": 3}}}
    doc = {"machine": {}, "layer": {"fp32": cmp}, "whole": cmp, "other": [1, 2]}
    assert [p for p, _ in report.comparisons(doc)] == [("layer", "fp32"), ("whole",)]
