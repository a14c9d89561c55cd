"""Retrieval tasks that name TREC qrels and a query file: metrics equal pytrec_eval's on the same run,
and unusable judgement / query lines are counted with their line numbers."""

import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from patentgpt.config import ConfigError
from patentgpt.embed.qrels import read_qrels, read_queries
from patentgpt.embed.taskdef import load_task, resolve
from patentgpt.embed.tasks import run_task
from patentgpt.embed.views import render_view

FIX = Path(__file__).parent / "fixtures" / "embed"


class HashEmbedder:
    """Bag of hashed word stems: deterministic, cheap, and it really ranks on-topic abstracts first."""
    model_dir, pooling = "hash", "bag"

    def encode(self, texts, **kw):
        x = np.zeros((len(texts), 512), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]{3,}", t.lower()):
                x[i, zlib.crc32(w[:5].encode()) % 512] += 1.0
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _task(tmp_path, qrels=FIX / "qrels.txt", queries=FIX / "queries.tsv"):
    path = tmp_path / "topics.yaml"
    path.write_text(f"name: demo_topics\nkind: retrieval\ndata: ['demo://patents_en.jsonl']\nview: abstract\n"
                    f"qrels: {qrels}\nqueries: {queries}\n")
    return load_task(path)


def _clean_lines(path):
    return [ln for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_qrels_metrics_equal_pytrec_eval_on_the_same_run(tmp_path):
    import pytrec_eval

    task = _task(tmp_path)
    res = run_task(task, HashEmbedder())
    assert res["status"] == "ok" and res["queries"] == 5 and res["documents"] == 72 and res["rejects"] == []
    # the same run, built here from the fixture files and scored by pytrec_eval's own parsers
    docs = [(r["id"], render_view(r, "abstract")) for r in map(__import__("json").loads,
                                                               resolve("demo://patents_en.jsonl").open())]
    queries = [ln.split("\t") for ln in _clean_lines(FIX / "queries.tsv")]
    emb = HashEmbedder()
    scores = emb.encode([q for _, q in queries]) @ emb.encode([t for _, t in docs]).T
    run = {qid: {docs[j][0]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]}
           for i, (qid, _) in enumerate(queries)}
    qrels = pytrec_eval.parse_qrel(_clean_lines(FIX / "qrels.txt"))
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(run)
    dense = res["metrics"]["dense"]["all"]
    for ours, theirs in (("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"), ("map", "map")):
        assert dense[ours] == pytest.approx(np.mean([ref[q][theirs] for q in ref]), abs=1e-9), ours
    assert 0.3 < dense["ndcg@10"] < 1.0          # graded judgements: on-topic abstracts do rank high
    assert set(res["metrics"]) == {"dense", "bm25", "interpolation", "rrf"}


def test_bad_qrels_and_query_lines_are_counted_with_line_numbers(tmp_path):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("batteries 0 DEMO-EN-0031 2\n"
                     "batteries 0 DEMO-EN-0050\n"           # 2: three fields
                     "batteries 0 DEMO-EN-0068 high\n"      # 3: grade not an integer
                     "batteries 0 NO-SUCH-DOC 1\n"          # 4: unknown document
                     "ghost 0 DEMO-EN-0001 1\n"             # 5: unknown query
                     "batteries 0 DEMO-EN-0031 1\n"         # 6: second judgement of one pair
                     "\n# comment\n"
                     "water 0 DEMO-EN-0014 0\n")            # 9: judged, but nothing relevant
    queries = tmp_path / "queries.tsv"
    queries.write_text("batteries\tlithium battery electrodes\nno tab here\nwater\tpurifying water\n"
                       "batteries\tagain\n")
    table, rejects = read_qrels(qrels, ["batteries", "water"], ["DEMO-EN-0031", "DEMO-EN-0014", "DEMO-EN-0068"])
    assert table == {"batteries": {"DEMO-EN-0031": 2}, "water": {"DEMO-EN-0014": 0}}
    assert [(r["line"], r["reason"].split(" ")[0]) for r in rejects] == [
        (2, "expected"), (3, "relevance"), (4, "unknown_doc"), (5, "unknown_query"), (6, "duplicate_judgement")]
    res = run_task(_task(tmp_path, qrels, queries), HashEmbedder())
    assert res["status"] == "ok" and res["queries"] == 1
    reasons = {(r.get("file"), r.get("line"), r.get("id"), r["reason"].split(" ")[0]) for r in res["rejects"]}
    assert ("queries.tsv", 2, None, "expected") in reasons and ("queries.tsv", 4, None, "duplicate_query") in reasons
    assert ("qrels.txt", 3, None, "relevance") in reasons and (None, None, "water", "no_relevant_judgement") in reasons
    assert len(res["rejects"]) == 2 + 5 + 1


def test_jsonl_queries_and_config_errors(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "title": "battery cell balancing"}\n{"title": "no id"}\nnot json\n')
    got, rejects = read_queries(q, "title")
    assert got == [("a", "battery cell balancing", {"id": "a", "title": "battery cell balancing"})]
    assert [(r["line"], r["reason"]) for r in rejects][0] == (2, "no_id") and rejects[1]["line"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\nkind: retrieval\ndata: ['demo://patents_en.jsonl']\nqrels: {FIX / 'qrels.txt'}\n")
    with pytest.raises(ConfigError, match="qrels"):
        load_task(bad)
    absent = _task(tmp_path, qrels=tmp_path / "none.txt")
    assert run_task(absent, HashEmbedder())["status"] == "skipped"
