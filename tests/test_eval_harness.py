"""The harness end to end: a fake LM that always prefers option A, --limit, repeatability,
contamination of planted items in token shards and documents, and a tiny LLaMA in the demo's
export format through `patentgpt eval` on every task (judge included)."""

import json
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from patentgpt.eval.harness import evaluate, flat_metrics
from patentgpt.eval.tasks import EVALS_DIR, load_task, task_files


class PrefersA(LM):
    """Gives the first option (letter A, 'True', the combination 'A') the highest log-likelihood."""

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(0.0 if cont.strip() in ("A", "True") else -1.0 - len(cont), False)
                for _, cont in (r.args for r in requests)]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        return ["A" for _ in requests]


def _outcomes(out: Path, task: str) -> list[dict]:
    return [o for o in map(json.loads, (out / "outcomes.jsonl").open()) if o["task"] == task]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_model_preferring_a_scores_the_share_of_a_answers_and_is_repeatable(tmp_path):
    quiz = _records(EVALS_DIR / "ipquiz" / "ipquiz_fixture.jsonl")
    exam = _records(EVALS_DIR / "exam" / "exam_fixture.jsonl")
    tasks = ["ipquiz", "patent_agent_exam"]
    res = evaluate(PrefersA(), tasks, tmp_path / "a")
    for lang in ("en", "zh"):
        expect = [r["answer"] == "A" for r in quiz if r["language"] == lang]
        m = res["tasks"][f"ipquiz_{lang}"]["metrics"]
        assert m["n"] == len(expect) and m["acc"] == pytest.approx(sum(expect) / len(expect))
        assert 0 < m["acc"] < 1
        # lm-eval's own aggregate agrees with ours
        assert res["tasks"][f"ipquiz_{lang}"]["lm_eval"]["acc"] == pytest.approx(m["acc"])
        items = [r for r in exam if r["language"] == lang]
        m = res["tasks"][f"patent_agent_exam_{lang}"]["metrics"]
        credit = [(1 / len(r["answer"])) if "A" in r["answer"] else 0.0 for r in items]
        assert m["acc"] == pytest.approx(sum(r["answer"] == "A" for r in items) / len(items))
        assert m["partial"] == pytest.approx(sum(credit) / len(items))
        assert m["exam_score"] == pytest.approx(100 * sum(c * r["points"] for c, r in zip(credit, items))
                                                / sum(r["points"] for r in items))
    again = evaluate(PrefersA(), tasks, tmp_path / "b")
    assert flat_metrics(again) == flat_metrics(res)
    limited = evaluate(PrefersA(), ["ipquiz"], tmp_path / "c", limit=3)
    assert {n: e["metrics"]["n"] for n, e in limited["tasks"].items()} == {"ipquiz_en": 3, "ipquiz_zh": 3}
    for f in ("results.json", "results.md", "results.png", "outcomes.jsonl"):
        assert (tmp_path / "c" / f).is_file()
    assert sum(1 for _ in (tmp_path / "c" / "outcomes.jsonl").open()) == 6


def test_true_false_share_of_true_statements(shared_data, tmp_path):
    records = _records(shared_data / "evals" / "patentbar_true_false.jsonl")[:60]
    res = evaluate(PrefersA(), ["patentbar_tf"], tmp_path, limit=60)
    assert res["tasks"]["patentbar_tf"]["metrics"]["acc"] == pytest.approx(sum(r["answer"] for r in records) / 60)


def _planted_docs(items: list[dict], plant: set[str]) -> list[str]:
    from patentgpt.eval.decontam import item_text

    corpus = [json.loads(line)["text"] for line in
              (Path(__file__).resolve().parents[1] / "patentgpt/assets/demo_corpus/ip_law.jsonl").open()]
    docs = list(corpus)
    for i, it in enumerate(it for it in items if it["id"] in plant):
        docs[i] = corpus[i][:300] + "\n" + item_text(it) + "\n" + corpus[i][300:]
    return docs


def test_contamination_finds_planted_items_in_shards_and_documents(ip_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from patentgpt.data.shards import ShardWriter, TokenizerInfo
    from patentgpt.eval.decontam import contamination

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    quiz = load_task("ipquiz").items
    items = {"ipquiz_en": quiz["en"], "ipquiz_zh": quiz["zh"]}
    plant = {quiz["en"][1]["id"], quiz["en"][5]["id"], quiz["zh"][2]["id"]}
    docs = _planted_docs(quiz["en"] + quiz["zh"], plant)
    with ShardWriter(tmp_path / "shards", TokenizerInfo.from_tokenizer(tok)) as w:
        for d in docs:
            w.add(tok.encode(d, add_special_tokens=False))
        w.close()
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    for source, kw in ((tmp_path / "shards", {"tokenizer": tok}), (tmp_path / "docs.jsonl", {})):
        report = contamination(items, [source], n=13, **kw)
        found = set(report["ipquiz_en"]["contaminated"]) | set(report["ipquiz_zh"]["contaminated"])
        assert found == plant, source
        assert report["ipquiz_en"]["share"] == pytest.approx(2 / len(quiz["en"]))
    # the unplanted corpus holds none of them
    clean = contamination(items, [Path(__file__).resolve().parents[1] / "patentgpt/assets/demo_corpus/ip_law.jsonl"])
    assert clean["ipquiz_en"]["contaminated"] == [] and clean["ipquiz_zh"]["contaminated"] == []
    # shards made with another tokenizer are refused
    other = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    other.add_tokens(["<extra>"])
    with pytest.raises(Exception, match="(?i)tokenizer|vocab"):
        contamination(items, [tmp_path / "shards"], tokenizer=other)


@pytest.fixture(scope="module")
def tiny_export(ip_tokenizer_dir, tmp_path_factory) -> Path:
    """A random LLaMA saved like `patentgpt demo`'s export (model + the demo IP tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("tiny_export")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_cli_runs_every_task_end_to_end_with_decontamination_and_judge(tiny_export, tmp_path, capsys):
    from patentgpt.cli import main

    docs = tmp_path / "train.jsonl"
    quiz = load_task("ipquiz").items["en"]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in _planted_docs(quiz, {quiz[0]["id"]})))
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_export), "--tasks", *sorted(task_files()),
               "--limit", "12", "--out", str(out), "--against", str(docs), "--decontaminate",
               "--judge", str(tiny_export), "--wandb", "disabled"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    ran = {e["task"] for e in res["tasks"].values()} | set(res["skipped"])
    assert ran == set(task_files())
    assert {"ipquiz", "patent_agent_exam", "patentmatch", "ipqa"} <= {e["task"] for e in res["tasks"].values()}
    for name, e in res["tasks"].items():
        m = e["metrics"]
        assert 0 < m["n"] <= 12, name
        if e["type"] == "open":
            assert 0 <= m["rouge_l"] <= 1 and 0 <= m["chrf"] <= 1 and 0 <= m["judge_win_rate"] <= 1
            assert all(o["judge"] in (0.0, 0.5, 1.0) for o in _outcomes(out, name))
        else:
            assert 0 <= m["acc"] <= 1 and e["lm_eval"]["acc"] == pytest.approx(m["acc"])
        assert "contaminated_share" in m and e["clean_metrics"]["n"] == m["n"] - len(e["contamination"]["contaminated"])
    assert res["tasks"]["ipquiz_en"]["contamination"]["contaminated"] == [quiz[0]["id"]]
    table = (out / "results.md").read_text()
    assert "| ipquiz_en | 8 |" in table and "clean acc" in table
    assert (out / "lm_eval" / "tasks" / "ipquiz_en.yaml").is_file()  # a plain lm-eval task
    assert "ipquiz_en" in capsys.readouterr().out


def test_run_eval_suite_returns_flat_metrics_and_restores_training_mode(tiny_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.eval import run_eval_suite

    model = AutoModelForCausalLM.from_pretrained(tiny_export).train()
    tok = AutoTokenizer.from_pretrained(tiny_export)
    flat = run_eval_suite(model, tok, ["ipquiz"], limit=4)
    assert set(flat) >= {"ipquiz_en/acc", "ipquiz_zh/acc", "ipquiz_en/acc_norm"} and flat["ipquiz_en/n"] == 4
    assert model.training
    from_dir = run_eval_suite(str(tiny_export), None, ["ipquiz"], limit=4)
    assert from_dir == flat


class Recording(PrefersA):
    contexts: list[str] = []

    def loglikelihood(self, requests, disable_tqdm=False):
        self.contexts.extend(r.args[0] for r in requests)
        return super().loglikelihood(requests, disable_tqdm)


def test_csv_columns_few_shot_and_generation_modes(tmp_path):
    """An MMLU-format CSV (no header; options in columns A-D) through a new task file only."""
    rows = [("What is patented?", "an invention", "a song", "a logo", "a name", "A"),
            ("Who examines US applications?", "WIPO", "the USPTO", "the EPO", "a court", "B"),
            ("Which right covers a brand?", "a trademark", "a patent", "copyright", "a design", "A"),
            ("What lasts 20 years from filing?", "a trademark", "copyright", "a US utility patent", "a secret", "C")]
    import csv

    with open(tmp_path / "law_test.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    task = tmp_path / "mini_mmlu.yaml"
    task.write_text(
        "name: mini_mmlu\ntype: multiple_choice\n"
        f"data: {{path: '{tmp_path}/*_test.csv', csv_columns: [question, A, B, C, D, answer]}}\n"
        "fields: {question: question, options: [A, B, C, D], answer: answer, language: null}\n"
        "prompt: {en: \"{question}\\n{options}\\nAnswer:\"}\nnum_fewshot: 1\nmetrics: [acc, exact_match]\n")
    lm = Recording()
    res = evaluate(lm, [str(task)], tmp_path / "ll")
    assert res["tasks"]["mini_mmlu"]["metrics"]["acc"] == pytest.approx(0.5)
    # one solved example (another row, with its answer) precedes each question
    first = [c for c in lm.contexts if c.rstrip().endswith("What is patented?\nA. an invention\nB. a song\n"
                                                          "C. a logo\nD. a name\nAnswer:")]
    assert first and all("Answer: " in c.split("What is patented?")[0] for c in first)
    task.write_text(task.read_text().replace("num_fewshot: 1", "num_fewshot: 0\nmode: generate"))
    res = evaluate(PrefersA(), [str(task)], tmp_path / "gen")
    m = res["tasks"]["mini_mmlu"]["metrics"]
    assert m["acc"] == pytest.approx(0.5) and m["exact_match"] == pytest.approx(0.5)


def test_judge_position_bias_cancels(monkeypatch):
    from patentgpt.eval.judge import PairwiseJudge

    judge = PairwiseJudge.__new__(PairwiseJudge)
    monkeypatch.setattr(judge, "prefers_first", lambda q, a, b, lang: True, raising=False)
    assert judge.score("q", "cand", "ref") == 0.5  # always "answer 1": a tie whichever answer is better
    monkeypatch.setattr(judge, "prefers_first", lambda q, a, b, lang: a == "cand", raising=False)
    assert judge.score("q", "cand", "ref") == 1.0
    monkeypatch.setattr(judge, "prefers_first", lambda q, a, b, lang: a == "ref", raising=False)
    assert judge.score("q", "cand", "ref") == 0.0


@pytest.mark.parametrize("max_length", [None, 24])  # 24: contexts truncated from the left (HFLM's rule)
def test_patentlm_log_likelihoods_match_lm_eval_hf_adapter(tiny_export, max_length):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.eval.lm import PatentLM

    model = AutoModelForCausalLM.from_pretrained(tiny_export)
    tok = AutoTokenizer.from_pretrained(tiny_export)
    tok.pad_token = tok.eos_token
    quiz = load_task("ipquiz").items
    reqs = [Instance("loglikelihood", {}, (f"Question: {it['question']}\nAnswer:", " " + opt[:12]), i)
            for it in quiz["en"][:3] + quiz["zh"][:3] for i, opt in enumerate(it["options"])]
    ours = PatentLM(model, tok, batch_size=4, max_length=max_length).loglikelihood(reqs, disable_tqdm=True)
    stock = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=max_length).loglikelihood(
        reqs, disable_tqdm=True)
    assert [g for _, g in ours] == [g for _, g in stock]
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, stock)) < 1e-4
