"""Task files and scoring without a model: field mapping, multi-answer credit, exam score,
true/false mapping, answer extraction, bad records set aside, config errors naming the key."""

import json

import pytest

from patentgpt.config import ConfigError
from patentgpt.eval.bridge import letter_combinations, prepare_doc
from patentgpt.eval.scoring import (exam_score, extract_label, extract_letters, item_outcome, partial_credit,
                                    rouge_l, summarize)
from patentgpt.eval.tasks import EVALS_DIR, TaskSpec, load_task, normalise, task_files
from tests.conftest import REPO


def _spec(**kw) -> TaskSpec:
    base = dict(name="t", type="multi_answer", data={"path": "x.jsonl"}, answer_type="letters",
                languages=["zh", "en"], prompt={"en": "Q: {question}\n{options}\nA:", "zh": "题：{question}\n{options}\n答："},
                metrics=["acc", "partial", "exam_score"], exam={"pass_mark": 60, "partial_credit": True},
                fields={"points": "points"})
    base.update(kw)
    return TaskSpec.model_validate(base)


def test_every_task_file_validates_and_fixtures_load_without_rejects():
    files = task_files()
    assert {"ipquiz", "patent_agent_exam", "patentmatch", "ipqa", "patentbar_tf", "mmlu", "ceval", "cmmlu"} <= set(files)
    for name in ("ipquiz", "patent_agent_exam", "patentmatch", "ipqa"):
        task = load_task(name)
        assert task.skipped is None and not task.rejected, (name, task.rejected)
        raw = sum(len(json.loads(p.read_text())) if p.suffix == ".json" else len(p.read_text().splitlines())
                  for p in (EVALS_DIR / task.source.parent.name).glob("*.json*"))
        assert sum(len(v) for v in task.items.values()) == raw


def test_multi_answer_partial_credit_and_exam_score_on_hand_made_items():
    # gold ABC; predictions: exact, subset, one wrong option, empty
    assert partial_credit({0, 1, 2}, {0, 1, 2}) == 1.0
    assert partial_credit({0, 2}, {0, 1, 2}) == pytest.approx(2 / 3)
    assert partial_credit({0, 3}, {0, 1, 2}) == 0.0
    assert partial_credit(set(), {0}) == 0.0
    # two 2-point questions (full, 2/3) and one 1-point question (wrong): (2 + 4/3 + 0) / 5 * 100
    assert exam_score([1.0, 2 / 3, 0.0], [2, 2, 1]) == pytest.approx(100 * (2 + 4 / 3) / 5)

    spec = _spec()
    records = [{"language": "zh", "problem": "q1", "candidates": {"A": "a", "B": "b", "C": "c", "D": "d"},
                "answer": "ABC", "points": 2},
               {"language": "en", "problem": "q2", "candidates": {"A": "a", "B": "b", "C": "c"}, "answer": "A, C",
                "points": 1}]
    items, rejected = normalise(spec, records)
    assert not rejected and items["zh"][0]["gold"] == [0, 1, 2] and items["en"][0]["gold"] == [0, 2]
    doc = prepare_doc(spec, items["zh"][0])
    assert doc["choices"] == letter_combinations(4) and len(doc["choices"]) == 15
    assert doc["choices"][doc["gold_index"]] == "ABC"
    # a logged lm-eval sample where the model's best combination is "AB": not exact, partial 2/3
    lls = [(-5.0, False)] * 15
    lls[doc["choices"].index("AB")] = (-1.0, False)
    outcome = item_outcome(spec, {"doc": doc, "filtered_resps": lls, "acc": 0.0, "acc_norm": 0.0})
    assert outcome["pred"] == [0, 1] and outcome["partial"] == pytest.approx(2 / 3) and outcome["correct"] == 0.0
    metrics = summarize(spec, [outcome, {"id": "x", "points": 1.0, "correct": 1.0, "correct_norm": 1.0, "partial": 1.0}])
    assert metrics["exam_score"] == pytest.approx(100 * (2 * 2 / 3 + 1) / 3)
    assert metrics["exam_pass"] == 1.0 and metrics["acc"] == 0.5
    no_partial = _spec(exam={"pass_mark": 90, "partial_credit": False})
    m2 = summarize(no_partial, [dict(outcome, partial=0.0)])
    assert m2["exam_score"] == 0.0 and m2["exam_pass"] == 0.0


def test_true_false_mapping_and_rejected_records_are_counted():
    spec = _spec(type="true_false", answer_type="bool", languages=["en"], prompt={"en": "S: {question}\nA:"},
                 metrics=["acc"], exam=None, fields={"question": "question", "language": None})
    records = [{"question": "a", "answer": True}, {"question": "b", "answer": "false"}, {"question": "c", "answer": "正确"},
               {"question": "d", "answer": "maybe"}, {"question": "", "answer": True}, "not a dict"]
    items, rejected = normalise(spec, records)
    assert [it["gold"] for it in items["en"]] == [[0], [1], [0]]
    assert all(it["options"] == ["True", "False"] for it in items["en"])
    assert rejected == {"bad_answer": 1, "no_question": 1, "not_a_record": 1}
    doc = prepare_doc(spec, items["en"][1])
    assert doc["choices"] == ["True", "False"] and doc["gold_index"] == 1 and doc["target"] == "False"


def test_patentbar_maps_booleans(shared_data):
    task = load_task("patentbar_tf")
    records = [json.loads(line) for line in (shared_data / "evals" / "patentbar_true_false.jsonl").open()]
    assert len(task.items["en"]) == len(records) == 677 and not task.rejected
    assert [it["gold"][0] == 0 for it in task.items["en"]] == [r["answer"] for r in records]


def test_mcq_rejects_answers_without_an_option_and_unknown_languages():
    spec = _spec(type="multiple_choice", answer_type="letter", metrics=["acc"], exam=None, fields={})
    recs = [{"language": "en", "problem": "q", "candidates": {"A": "x", "B": "y"}, "answer": "C"},
            {"language": "fr", "problem": "q", "candidates": {"A": "x", "B": "y"}, "answer": "A"},
            {"language": "en", "problem": "q", "candidates": {"A": "x", "B": "y"}, "answer": "AB"},
            {"language": "en", "problem": "q", "candidates": {"A": "x", "B": "y"}, "answer": "b"}]
    items, rejected = normalise(spec, recs)
    assert [it["gold"] for it in items["en"]] == [[1]]
    assert rejected == {"bad_answer": 2, "language_not_in_task:fr": 1}


def test_answer_extraction_and_reference_metrics():
    assert extract_letters("B. because", 4, multi=False) == {1}
    assert extract_letters("The answer is ACD", 4, multi=True) == {0, 2, 3}
    assert extract_letters("AB", 4, multi=False) == set()  # two letters for a one-answer question
    assert extract_letters("A, C", 4, multi=True) == {0, 2}
    assert extract_letters("no idea", 4, multi=False) == set()
    assert extract_label("It is false.", ["True", "False"]) == 1
    assert extract_label("错误，因为", ["正确", "错误"]) == 1
    assert rouge_l("the claim lacks novelty", "the claim lacks novelty") == 1.0
    assert rouge_l("新颖性", "新颖性是指") == pytest.approx(2 * 1 * 0.6 / 1.6)
    assert rouge_l("", "x") == 0.0


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad_task.yaml"
    bad.write_text("name: bad_task\ntype: multiple_choice\ndata: {path: x.jsonl}\nlanguages: [en, zh]\n"
                   "prompt: {en: 'Q: {question}'}\n")
    with pytest.raises(ConfigError, match="prompt"):
        load_task(str(bad))
    bad.write_text("name: other\ntype: multiple_choice\ndata: {path: x.jsonl}\nprompt: {en: 'Q'}\n")
    with pytest.raises(ConfigError, match="name"):
        load_task(str(bad))
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_task("nope")
    from patentgpt.cli import main

    assert main(["eval", "--tasks", "ipquiz"]) == 2  # no model
    assert main(["eval", "--model", str(REPO), "--tasks", "ipquiz", "--limit", "0"]) == 2  # limit >= 1


def test_data_pipeline_filter_excludes_documents_holding_eval_items(demo_corpus):
    from patentgpt.data.pipeline.config import FiltersConfig
    from patentgpt.data.pipeline.filters import DocFilter
    from patentgpt.eval.decontam import item_text

    docs = [json.loads(line) for line in (demo_corpus / "ip_law.jsonl").open()]
    quiz = load_task("ipquiz").items
    planted = docs[0]["text"][:400] + "\n" + item_text(quiz["zh"][2]) + "\n" + docs[0]["text"][400:]
    flt = DocFilter(FiltersConfig.model_validate({"eval_exclusion": {"tasks": ["ipquiz", "patent_agent_exam"]}}))
    decision = flt(planted, "en")
    assert not decision.keep and decision.reason == "eval_contamination"
    assert decision.detail["items"] == [f"ipquiz/{quiz['zh'][2]['id']}"]
    kept = [flt(d["text"], d["lang"]) for d in docs]
    assert all(d.reason != "eval_contamination" for d in kept)
    assert DocFilter(FiltersConfig())(planted, "en").reason != "eval_contamination"  # off by default
    with pytest.raises(Exception, match="eval_exclusion.ngram"):
        from patentgpt.config.base import validate
        validate(FiltersConfig, {"eval_exclusion": {"ngram": 0}})


def test_eval_during_training_section_schedules_and_names_unknown_tasks():
    from patentgpt.config.base import validate
    from patentgpt.eval.harness import EvalDuringTraining

    sec = validate(EvalDuringTraining, {"tasks": ["ipquiz"], "every_steps": 50})
    assert [s for s in range(1, 201) if sec.due(s)] == [50, 100, 150, 200]
    assert sec.due(173, last=True) and not EvalDuringTraining().due(100, last=True)
    with pytest.raises(ConfigError, match="tasks.*unknown task 'ipquizz'"):
        validate(EvalDuringTraining, {"tasks": ["ipquizz"]}, source="stage")
