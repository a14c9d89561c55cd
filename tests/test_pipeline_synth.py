"""Instruction synthesis from real structured patents (demo corpus, ../shared/data when present).

Records are converted here to the pipeline's internal document contract
``{"id", "source", "loc", "lang", "text", "meta": {...}}`` the way ingest hands them over.
"""

from __future__ import annotations

import ast
import collections
import json
import re

import pytest

from patentgpt.config import ConfigError, load_config
from patentgpt.data.pipeline.synth import (
    RECORD_TASKS,
    TASKS,
    SynthConfig,
    SynthStats,
    claim_structure_answer,
    detect_lang,
    first_sentence,
    load_qa_files,
    normalize_code,
    parse_claims,
    synthesize,
    write_synth,
)

ROLES = ["system", "user", "assistant"]


def _doc(rid: str, lang: str, source: str, loc: str, **meta) -> dict:
    text = "\n".join(str(v) for v in meta.values() if isinstance(v, str))
    return {"id": rid, "source": source, "loc": loc, "lang": lang, "text": text, "meta": meta}


def _demo_records(demo_corpus) -> list[dict]:
    docs = []
    for name in ("patents_en.jsonl", "patents_zh.jsonl"):
        path = demo_corpus / name
        if not path.is_file():
            continue
        for n, line in enumerate(path.open(encoding="utf-8"), 1):
            r = json.loads(line)
            meta = {k: r[k] for k in ("title", "abstract", "claims", "ipc", "date") if k in r}
            docs.append(_doc(r["id"], r["lang"], "demo", f"{name}:{n}", **meta))
    return docs


def _listish(value):
    """Some shared records hold lists as their Python repr ("['a', 'b']")."""
    if isinstance(value, str) and value.startswith("["):
        return ast.literal_eval(value)
    return value


def _shared_records(shared) -> list[dict]:
    docs = []
    patents = shared / "patents"
    for n, line in enumerate((patents / "en" / "uspto_fulltext.jsonl").open(encoding="utf-8"), 1):
        r = json.loads(line)
        rid = r.get("publication_number") or r["application_number"]
        meta = {"title": r["title"], "abstract": r["abstract"], "claims": _listish(r["claims"])}
        if r.get("ipc"):
            meta["ipc"] = _listish(r["ipc"])
        docs.append(_doc(rid, "en", "uspto", f"uspto_fulltext.jsonl:{n}", **meta))
    for n, line in enumerate((patents / "zh" / "cn_cpc_abstracts.jsonl").open(encoding="utf-8"), 1):
        r = json.loads(line)
        fields = dict(re.findall(r"^(Title|Abstract): (.*)$", r["text"], flags=re.M))
        if not fields:  # the other layout of this file: "title [SEP] keywords [SEP] abstract"
            parts = r["text"].split(" [SEP] ")
            fields = {"Title": parts[0], "Abstract": parts[-1]}
        docs.append(_doc(r["publication_number"], "zh", "cn_cpc", f"cn_cpc_abstracts.jsonl:{n}",
                         title=fields["Title"], abstract=fields["Abstract"], cpc=r["cpc_labels"]))
    claims = collections.defaultdict(list)
    for line in (patents / "zh" / "cn_claim_sentences.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        claims[r["patent_id"]].append(r["text"])
    docs.extend(_doc(pid, "zh", "cn_claims", pid, claims=c) for pid, c in claims.items())
    with (patents / "zh" / "cn_titles_ipc.jsonl").open(encoding="utf-8") as fh:
        for n, line in zip(range(1, 41), fh):
            r = json.loads(line)
            docs.append(_doc(r["publication_numbers"][0], "zh", "cn_titles", f"cn_titles_ipc.jsonl:{n}",
                             title=r["title"], ipc=r["ipc_subclasses"]))
    return docs


def _check_chat(example: dict) -> None:
    """The shape TRL's conversational datasets and ChatML templates take as they are."""
    assert set(example) == {"messages", "task", "lang", "source_id"}
    assert [m["role"] for m in example["messages"]] == ROLES
    for message in example["messages"]:
        assert set(message) == {"role", "content"}
        assert isinstance(message["content"], str) and message["content"].strip()
        assert "<|im_start|>" not in message["content"] and "<|im_end|>" not in message["content"]
    assert example["lang"] in ("en", "zh") and example["task"] in TASKS
    # the prompt (instruction + patent text) is written in the record's language
    assert detect_lang(example["messages"][1]["content"]) == example["lang"]


def _by_task(examples):
    out = collections.defaultdict(dict)
    for ex in examples:
        out[ex["task"]][ex["source_id"]] = ex
    return out


def _answer(ex) -> str:
    return ex["messages"][2]["content"]


def test_every_task_on_demo_patents_is_grounded(demo_corpus, ip_tokenizer_dir):
    from transformers import AutoTokenizer

    docs = _demo_records(demo_corpus)
    assert len(docs) >= 50
    stats = SynthStats()
    examples = list(synthesize(docs, tasks=list(RECORD_TASKS), seed=0, stats=stats))
    assert stats.records == len(docs)
    assert stats.produced == {t: len(docs) for t in RECORD_TASKS}  # every demo record has every field
    for ex in examples:
        _check_chat(ex)
    tasks = _by_task(examples)
    for doc in docs:
        meta, sid, lang = doc["meta"], doc["id"], doc["lang"]
        assert _answer(tasks["title_from_abstract"][sid]) == meta["title"]
        assert meta["abstract"] in tasks["title_from_abstract"][sid]["messages"][1]["content"]
        assert _answer(tasks["abstract_from_claims"][sid]) == meta["abstract"]
        ipc = _answer(tasks["ipc_classification"][sid])
        assert all(code in ipc for code in meta["ipc"])
        section = meta["ipc"][0][0]
        assert f"{section} (" in ipc or f"{section}部" in ipc
        structure = _answer(tasks["claim_type"][sid])
        independent = structure.splitlines()[0]
        if lang == "en":
            assert re.match(r"Independent claims: 1\b", independent)
            assert "claim 2 depends on claim 1" in structure
        else:
            assert re.match(r"独立权利要求：1\b", independent)
            assert "权利要求2引用权利要求1" in structure
        summary = _answer(tasks["summarize"][sid])
        assert summary.startswith(first_sentence(meta["abstract"], lang))
        assert len(summary) < len(meta["abstract"]) + 300
    # a real example as the ChatML chat template renders it (how SFT will see it)
    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    ex = tasks["claim_type"][docs[0]["id"]]
    rendered = tok.apply_chat_template(ex["messages"], tokenize=False)
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith(f"<|im_start|>assistant\n{_answer(ex)}<|im_end|>\n")


def test_claim_type_demo_records_in_detail(demo_corpus):
    docs = _demo_records(demo_corpus)
    first = next(d for d in docs if d["id"] == "DEMO-EN-0001")
    ex = next(synthesize([first], tasks=["claim_type"], seed=0))
    assert _answer(ex) == (
        "Independent claims: 1, 5.\nDependent claims:\n- claim 2 depends on claim 1\n"
        "- claim 3 depends on claim 1\n- claim 4 depends on claim 1\n- claim 6 depends on claim 5")
    for number, claim in enumerate(first["meta"]["claims"], 1):
        assert claim.split(". ", 1)[1] in ex["messages"][1]["content"]


def test_synthesis_is_deterministic_and_seed_only_changes_wording(demo_corpus):
    docs = _demo_records(demo_corpus)
    qa = [{"question": "Is a provisional application examined?", "answer": "No, it is never examined."}]
    run = lambda seed: [json.dumps(e, ensure_ascii=False) for e in  # noqa: E731
                        synthesize(docs, tasks=list(TASKS), seed=seed, qa_sets=qa)]
    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    a, b = [json.loads(x) for x in first], [json.loads(x) for x in other]
    assert [_answer(x) for x in a] == [_answer(x) for x in b]  # answers never depend on the seed
    prompts = {x["messages"][1]["content"] for x in a} ^ {x["messages"][1]["content"] for x in b}
    assert prompts  # several templates are in use and the seed picks among them


def test_records_lacking_fields_are_skipped_and_counted():
    full = {"title": "Widget", "abstract": "A widget turns. It is small.",
            "claims": ["1. A widget comprising a shaft.", "2. The widget of claim 1, wherein the shaft is steel."],
            "ipc": ["F16C 3/02"]}
    docs = [
        _doc("ok", "en", "t", "1", **full),
        _doc("no-abstract", "en", "t", "2", **{k: v for k, v in full.items() if k != "abstract"}),
        _doc("no-claims", "en", "t", "3", **{k: v for k, v in full.items() if k != "claims"}),
        _doc("unnumbered", "en", "t", "4", **{**full, "claims": ["A widget.", "The widget, blue."]}),
        _doc("cpc-only", "en", "t", "5", **{**{k: v for k, v in full.items() if k != "ipc"}, "cpc": ["F16C3/02"]}),
        _doc("bad-codes", "en", "t", "6", **{**full, "ipc": ["not a code"]}),
        _doc("bad-title", "en", "t", "7", **{**full, "title": ["Widget"]}),
        _doc("other-lang", "other", "t", "8", **full),
        _doc("law-text", "en", "t", "9", kind="text"),
        _doc("ok#rw", "en", "t", "10", **full, rewritten_from="ok", original_kept=True),
        {"id": "no-meta", "lang": "en", "text": "x"},
        "not a record",
    ]
    stats = SynthStats()
    examples = list(synthesize(docs, tasks=list(RECORD_TASKS), seed=0, stats=stats))
    skipped = {t: dict(c) for t, c in stats.as_dict()["skipped"].items()}
    common = {"unsupported_lang": 1, "missing:meta": 1, "not_a_record": 1, "not_a_patent": 1,
              "rewritten_copy": 1}
    assert skipped["title_from_abstract"] == {**common, "missing:abstract": 1, "bad_type:title": 1}
    assert skipped["abstract_from_claims"] == {**common, "missing:abstract": 1, "missing:claims": 1,
                                               "claims_unnumbered": 1}
    assert skipped["claim_type"] == {**common, "missing:claims": 1, "claims_unnumbered": 1}
    assert skipped["ipc_classification"] == {**common, "no_valid_codes:ipc": 1}
    assert skipped["summarize"] == {**common, "missing:abstract": 1}
    for task in RECORD_TASKS:  # every record accounted for, per task
        assert stats.produced[task] + sum(stats.skipped[task].values()) == len(docs)
    tasks = _by_task(examples)
    assert _answer(tasks["ipc_classification"]["cpc-only"]).startswith("CPC codes: F16C 3/02.")
    assert _answer(tasks["summarize"]["no-claims"]) == "A widget turns."  # abstract only: first sentence
    assert _answer(tasks["summarize"]["ok"]) == "A widget turns. Claim 1 is directed to a widget."


def test_max_per_task_caps_output(demo_corpus):
    docs = _demo_records(demo_corpus)[:10]
    stats = SynthStats()
    out = list(synthesize(docs, tasks=["title_from_abstract", "claim_type"], seed=0, stats=stats, max_per_task=3))
    assert collections.Counter(e["task"] for e in out) == {"title_from_abstract": 3, "claim_type": 3}
    assert stats.skipped["claim_type"]["max_per_task"] == 7


def test_claim_parsing_real_world_shapes():
    inline = ("What is claimed is: 1. A pump having a 1.5 mm inlet. 2. The pump of claim 1. "
              "3. The pump of claim 1 or 2, wherein the inlet is round. "
              "4. A method of using the pump according to any one of claims 1 to 3.")
    claims = parse_claims(inline)
    assert [(c.number, c.refs) for c in claims] == [(1, ()), (2, (1,)), (3, (1, 2)), (4, (1, 2, 3))]
    assert claims[0].text == "A pump having a 1.5 mm inlet."
    pieces = ["1 - 3 . (canceled)", "4 . A valve comprising:", "a seat;", "a ball,",
              "5 . The valve of claim 4 , wherein the ball is steel.", "6. A valve as recited in claims 4-5."]
    claims = parse_claims(pieces)
    assert [(c.number, c.canceled, c.refs) for c in claims] == [
        (1, True, ()), (2, True, ()), (3, True, ()), (4, False, ()), (5, False, (4,)), (6, False, (4, 5))]
    assert claims[3].text == "A valve comprising: a seat; a ball,"
    answer = claim_structure_answer(claims, "en")
    assert "Independent claims: 4." in answer and "Canceled claims: 1-3." in answer
    assert "claim 6 depends on claims 4 or 5 (multiple dependency)" in answer
    zh = ["1.一种压力传感器，包括：", "第一导体；", "2.根据权利要求1所述的压力传感器，其特征在于，",
          "3、如权利要求1至2中任一项所述的压力传感器。"]
    claims = parse_claims(zh)
    assert [(c.number, c.refs) for c in claims] == [(1, ()), (2, (1,)), (3, (1, 2))]
    assert "权利要求3引用权利要求1或2（多项从属）" in claim_structure_answer(claims, "zh")
    assert parse_claims(["A widget.", "2. The widget of claim 1."]) == []  # text before any claim 1
    assert parse_claims(42) == []


def test_text_helpers():
    assert normalize_code("G06F015/00") == "G06F 15/00"
    assert normalize_code("g06f16/3329") == "G06F 16/3329"
    assert normalize_code("A01M") == "A01M"
    assert normalize_code("H01M 10/44") == "H01M 10/44"
    assert normalize_code("12345") is None
    text = "The device, e.g. a pump (see Fig. 2), moves U.S. water. It is small."
    assert first_sentence(text, "en") == "The device, e.g. a pump (see Fig. 2), moves U.S. water."
    assert first_sentence("本发明涉及一种泵。泵很小。", "zh") == "本发明涉及一种泵。"
    assert detect_lang("一种基于深度学习的专利分类方法 CNN") == "zh"
    assert detect_lang("A centrifugal pump 泵") == "en"  # one Han character against three English words
    assert detect_lang("Eine Kreiselpumpe mit einem Laufrad und einer Welle, die von dem Motor angetrieben "
                       "wird, und eine Dichtung zwischen dem Gehäuse und der Welle, die das Austreten des "
                       "Mediums verhindert, sowie ein Lager für die Welle im Gehäuse der Pumpe") is None


def test_question_sets_three_shapes(tmp_path):
    items = [
        {"question": "A design patent lasts 15 years from grant.", "answer": True, "explanation": "35 USC 173."},
        {"language": "zh", "problem": "发明专利权的期限为多少年？", "candidates": {"A": "10年", "B": "20年"}, "answer": "B"},
        {"id": "open-1", "question": "What does MPEP stand for?", "answer": "Manual of Patent Examining Procedure"},
        {"question": "Broken?", "answer": None},
        {"problem": "Which one?", "candidates": {"A": "x"}, "answer": "C"},
        {"question": "Frage auf Deutsch?", "answer": "Ja", "language": "de"},
    ]
    stats = SynthStats()
    out = list(synthesize([], tasks=["qa"], seed=0, qa_sets=items, stats=stats))
    for ex in out:
        _check_chat(ex)
    assert [_answer(e) for e in out] == ["True. 35 USC 173.", "B. 20年", "Manual of Patent Examining Procedure"]
    assert out[1]["lang"] == "zh" and "A. 10年\nB. 20年" in out[1]["messages"][1]["content"]
    assert out[2]["source_id"] == "open-1" and out[0]["source_id"].startswith("qa-")
    assert dict(stats.skipped["qa"]) == {"missing:answer": 1, "answer_not_a_candidate": 1, "unsupported_lang": 1}
    # files: JSONL with a malformed line, and JSON
    (tmp_path / "q.jsonl").write_bytes(b'{"question": "Q1?", "answer": "A1"}\n{broken\n\n')
    (tmp_path / "q.json").write_text(json.dumps({"data": [{"question": "Q2?", "answer": "A2"}]}))
    stats = SynthStats()
    loaded = load_qa_files(["q.jsonl", "q.json"], base_dir=tmp_path, stats=stats)
    assert [i["question"] for i in loaded] == ["Q1?", "Q2?"] and stats.skipped["qa"]["malformed_line"] == 1
    with pytest.raises(ConfigError, match="synth.qa_files"):
        load_qa_files(["missing.jsonl"], base_dir=tmp_path)


def test_patentbar_questions(shared_data):
    path = shared_data / "evals" / "patentbar_true_false.jsonl"
    items = [json.loads(line) for line in path.open(encoding="utf-8")]
    stats = SynthStats()
    out = list(synthesize([], tasks=["qa"], seed=0, qa_sets=items, stats=stats))
    assert stats.produced["qa"] + sum(stats.skipped["qa"].values()) == len(items)
    assert stats.produced["qa"] >= 0.95 * len(items)
    for ex, item in zip(out, (i for i in items if isinstance(i.get("answer"), bool))):
        _check_chat(ex)
        assert _answer(ex).startswith("True." if item["answer"] else "False.")
        assert item["question"].split()[0] in ex["messages"][1]["content"]


def test_shared_patents_in_both_languages(shared_data):
    docs = _shared_records(shared_data)
    stats = SynthStats()
    examples = list(synthesize(docs, tasks=list(RECORD_TASKS), seed=0, stats=stats))
    for ex in examples:
        _check_chat(ex)
    for task in RECORD_TASKS:
        assert stats.produced[task] + sum(stats.skipped[task].values()) == len(docs)
    by_lang = collections.Counter((e["task"], e["lang"]) for e in examples)
    for task in ("title_from_abstract", "ipc_classification", "claim_type", "summarize"):
        assert by_lang[(task, "en")] > 0 and by_lang[(task, "zh")] > 0, task
    assert by_lang[("abstract_from_claims", "en")] > 0
    tasks = _by_task(examples)
    by_id = {d["id"]: d for d in docs}
    for sid, ex in tasks["title_from_abstract"].items():
        assert _answer(ex) == " ".join(by_id[sid]["meta"]["title"].split())
    for sid, ex in tasks["ipc_classification"].items():
        meta = by_id[sid]["meta"]
        codes = [normalize_code(c) for c in meta.get("ipc") or meta.get("cpc")]
        assert all(c in _answer(ex) for c in codes if c)
    zh_structures = [_answer(ex) for sid, ex in tasks["claim_type"].items() if by_id[sid]["lang"] == "zh"]
    assert len(zh_structures) >= 20
    assert sum("权利要求2引用权利要求1" in s for s in zh_structures) >= 20
    # the two CNIPA claim groups in the file that start mid-claim have no numbered claim
    assert stats.skipped["claim_type"]["claims_unnumbered"] == 2
    # Chinese title/IPC records carry no abstract: skipped for the abstract tasks, used for IPC
    assert stats.skipped["title_from_abstract"]["missing:abstract"] >= 40
    assert by_lang[("ipc_classification", "zh")] >= 40 + 50
    # a canceled-claims application: the canceled range is named, claim 32 is independent
    structure = _answer(tasks["claim_type"]["16100020"])
    assert structure.startswith("Independent claims: 32, 55, 56, 57.") and "Canceled claims: 1-31." in structure


def test_config_validation_and_write(tmp_path, demo_corpus):
    cfg = SynthConfig()
    assert cfg.tasks == list(TASKS) and not cfg.enabled and cfg.output_name == "sft_synth.jsonl"
    with pytest.raises(ConfigError, match=r"tasks: unknown task 'title_from_claims'"):
        load_config(SynthConfig, data={"tasks": ["claim_type", "title_from_claims"]})
    with pytest.raises(ConfigError, match="listed more than once"):
        load_config(SynthConfig, data={"tasks": ["qa", "qa"]})
    with pytest.raises(ConfigError, match="output_name: must be a plain file name"):
        load_config(SynthConfig, data={"output_name": "../x.jsonl"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SynthConfig, data={"task": ["qa"]})
    (tmp_path / "qa.jsonl").write_text('{"question": "What is a claim?", "answer": "The legal scope."}\n')
    cfg = load_config(SynthConfig, data={"enabled": True, "seed": 3, "qa_files": ["qa.jsonl"]})
    docs = _demo_records(demo_corpus)[:5]
    report = write_synth(docs, cfg, tmp_path / "out", base_dir=tmp_path)
    lines = (tmp_path / "out" / "sft_synth.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == report["total_produced"] == 5 * len(RECORD_TASKS) + 1
    assert [json.loads(x) for x in lines] == list(synthesize(docs, tasks=cfg.tasks, seed=3, qa_sets=[
        {"question": "What is a claim?", "answer": "The legal scope."}]))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["sft_synth.jsonl"]  # no temp file left
