"""Embedding tasks on the demo corpus (and the shared phrase-matching pairs when present):
kept-library metrics, BM25 fusion, reports, and a real model beating random vectors."""

import csv
import json

import numpy as np
import pytest

from patentgpt.config import ConfigError
from patentgpt.embed import fusion, metrics
from patentgpt.embed.evaluate import evaluate
from patentgpt.embed.taskdef import find_tasks, load_task, read_pairs, resolve
from patentgpt.embed.tasks import run_task


class RandomEmbedder:
    model_dir, pooling = "random", "none"

    def encode(self, texts, **kw):
        x = np.random.default_rng(len(texts)).normal(size=(len(texts), 64)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_retrieval_metrics_come_from_trec_eval():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    first = metrics.retrieval(np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]]), ["q1", "q2"], ["d1", "d2", "d3"], qrels)
    second = metrics.retrieval(np.array([[0.5, 0.1, 0.9], [0.9, 0.5, 0.1]]), ["q1", "q2"], ["d1", "d2", "d3"], qrels)
    assert metrics.mean_measures(first) == {"ndcg@10": 1.0, "recall@100": 1.0, "map": 1.0, "queries": 2}
    assert second["q1"]["ndcg@10"] == pytest.approx(1 / np.log2(3)) and second["q2"]["map"] == pytest.approx(0.5)


def test_fusion_bm25_interpolation_and_rrf():
    docs = ["锂电池 的 正极材料 包覆", "a lens with variable focus", "battery cell balancing by impedance"]
    lexical = fusion.bm25_scores(["电池正极", "battery impedance"], docs)
    assert lexical.argmax(1).tolist() == [0, 2] and fusion.tokenize("电池ABC x") == ["电", "池", "abc", "x"]
    dense = np.array([[0.1, 0.9, 0.2], [0.3, 0.2, 0.1]])
    inter = fusion.interpolate(dense, lexical, 0.5)
    assert inter.shape == dense.shape and inter.min() >= 0 and inter.max() <= 1
    fused = fusion.rrf(dense, lexical, k=60)
    # query 0: doc 0 is ranked 3rd (dense) and 1st (BM25) -> 1/63 + 1/61
    assert fused[0, 0] == pytest.approx(1 / 63 + 1 / 61)
    assert np.allclose(fusion.interpolate(dense, lexical, 1.0).argmax(1), dense.argmax(1))


def test_minilm_beats_random_vectors_on_demo_tasks(tmp_path):
    tasks = [load_task(find_tasks(["demo_retrieval"])[0]),
             load_task(find_tasks(["demo_classification"])[0])]
    from patentgpt.embed.extract import Embedder

    minilm = Embedder()
    out = {t.name: (run_task(t, minilm), run_task(t, RandomEmbedder())) for t in tasks}
    real, rand = out["demo_retrieval"]
    dense = real["metrics"]["dense"]
    assert dense["all"]["ndcg@10"] > rand["metrics"]["dense"]["all"]["ndcg@10"] + 0.3
    assert dense["in_domain"]["queries"] + dense["out_of_domain"]["queries"] == dense["all"]["queries"] == real["queries"]
    assert set(real["metrics"]) == {"dense", "bm25", "interpolation", "rrf"}
    real, rand = out["demo_classification"]
    assert real["metrics"]["micro_f1"] > rand["metrics"]["micro_f1"] and real["metrics"]["test"] > 20


def test_evaluate_writes_json_markdown_png(tmp_path):
    tasks = [load_task(p, ["view=title"]) for p in find_tasks(["demo_clustering"])]
    summary = evaluate({"minilm": {}}, tasks, tmp_path, log=lambda *_: None)
    res = summary["demo_clustering"]["minilm"]
    assert res["status"] == "ok" and 0 < res["metrics"]["v_measure"] < 1 and res["metrics"]["records"] == 148
    d = tmp_path / "demo_clustering"
    assert json.loads((d / "results.json").read_text())["minilm"]["metrics"] == res["metrics"]
    assert "v_measure" in (d / "results.md").read_text() and (d / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "demo_clustering" in (tmp_path / "summary.md").read_text()


def test_task_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: retrieval\ndata: ['demo://patents_en.jsonl']\nquery_veiw: title\n")
    with pytest.raises(ConfigError, match="query_veiw: unknown key"):
        load_task(bad)
    bad.write_text("name: x\nkind: retrieval\ndata: ['demo://patents_en.jsonl']\nview: abstarct\n")
    with pytest.raises(ConfigError, match="abstarct"):
        load_task(bad)
    absent = load_task(find_tasks(["demo_retrieval"])[0], ["data=[shared://nowhere.jsonl]"])
    assert run_task(absent, RandomEmbedder())["status"] == "skipped"


@pytest.mark.shared_data
def test_phrase_matching_split_is_anchor_disjoint(shared_data):
    task = load_task(find_tasks(["phrase_matching"])[0])
    rows, rejects = read_pairs(resolve(task.data[0]), task)
    with open(resolve(task.data[0]), newline="", encoding="utf-8") as fh:
        anchors = [r["anchor"] for r in csv.DictReader(fh)]
    assert len(rows) + len(rejects) == len(anchors) == 27298
    parts = {}
    for row in rows:
        parts.setdefault(row["a"], set()).add(row["part"])
    assert all(len(p) == 1 for p in parts.values())
    share = {p: sum(r["part"] == p for r in rows) / len(rows) for p in ("train", "dev", "test")}
    assert 0.6 < share["train"] < 0.8 and 0.1 < share["test"] < 0.3 and share["dev"] > 0.03


def test_sibling_column_lists_the_other_targets_of_the_group_within_one_part(tmp_path):
    """``siblings``: each row sees the other targets of its (anchor, context) group, never its own,
    never a row of another split part; a bad score is set aside, a missing column names itself."""
    data = tmp_path / "pairs.csv"
    rows = [("bolt", "screw", "F16", "1.0"), ("bolt", "nut", "F16", "0.5"), ("bolt", "lightning", "H01", "0.25"),
            ("bolt", "rivet", "F16", "x"), ("gear", "cog", "F16", "0.75"), ("gear", "bike", "F16", "0.25")]
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["anchor", "target", "context", "label"])
        w.writerows(rows)
    task = tmp_path / "t.yaml"
    task.write_text(f"name: t\nkind: similarity\ndata: ['{data}']\ntext_b: '{{target}} [SEP] {{targets}}'\n"
                    "siblings: {by: [anchor, context], field: target, name: targets}\n"
                    "split: {key: anchor, test_fraction: 0.5}\n")
    cfg = load_task(task)
    got, rejects = read_pairs(data, cfg)
    assert rejects == [{"line": 5, "reason": "bad_score"}] and len(got) == 5
    by_b = {r["b"].split(" [SEP] ")[0]: r for r in got}
    assert by_b["screw"]["b"] == "screw [SEP] nut" and by_b["nut"]["b"] == "nut [SEP] screw"   # rivet's score was bad
    assert by_b["lightning"]["b"] == "lightning [SEP] "                      # alone in its context
    assert by_b["cog"]["b"] == "cog [SEP] bike"
    per_row = load_task(task, ["split={key: target, test_fraction: 0.5}"])   # splits the F16 bolt group
    split_rows, _ = read_pairs(data, per_row)
    assert len({r["part"] for r in split_rows if r["b"].split(" [SEP] ")[0] in ("screw", "nut")}) == 2
    for r in split_rows:   # siblings are keyed by (part, anchor, context): a split group shares no mates
        mates = [m for m in r["b"].split(" [SEP] ")[1].split("; ") if m]
        assert all(next(x for x in split_rows if x["b"].startswith(m + " [SEP]"))["part"] == r["part"] for m in mates)
    with pytest.raises(ConfigError, match="siblings: column 'ctx'"):
        read_pairs(data, load_task(task, ["siblings={by: [anchor, ctx], field: target}"]))


@pytest.mark.shared_data
def test_phrase_context_task_keeps_the_split_and_scores_dev_apart(shared_data):
    plain, ctx = (load_task(find_tasks([n])[0]) for n in ("phrase_matching", "phrase_matching_context"))
    rows, ctx_rows = (read_pairs(resolve(t.data[0]), t)[0] for t in (plain, ctx))
    assert [r["part"] for r in rows] == [r["part"] for r in ctx_rows]       # same anchor-disjoint split
    first = ctx_rows[0]
    assert first["a"].startswith(rows[0]["a"] + " [SEP] ") and first["a"].split(" [SEP] ")[1] == first["b"].split(" [SEP] ")[1]
    dev, test = (run_task(load_task(find_tasks(["phrase_matching"])[0], [f"eval_part={p}", "limit=60"]),
                          RandomEmbedder()) for p in ("dev", "test"))
    assert dev["metrics"]["pairs"] == test["metrics"]["pairs"] == 60
    assert dev["metrics"]["pearson"] != test["metrics"]["pearson"]
    with pytest.raises(ConfigError, match="eval_part"):
        load_task(find_tasks(["phrase_matching"])[0], ["eval_part=train"])
