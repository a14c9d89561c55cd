"""Our task files as lm-eval tasks: prepared JSONL per task and language plus an lm-eval YAML.

For each task and language this writes ``DIR/data/TASK.jsonl`` (one prepared document per item:
the rendered prompt, the scored continuations ``choices``, the ``gold`` index, the generation
``target``) and ``DIR/tasks/TASK.yaml``: an ordinary lm-eval task over local JSON
(``dataset_path: json``), so ``lm_eval --include_path DIR/tasks`` runs the same thing.

Scoring is lm-eval's: ``multiple_choice`` by log-likelihood (``acc``, ``acc_norm``) or
``generate_until`` with a regex answer extraction (``exact_match``). Multi-answer questions are
scored by log-likelihood over every non-empty combination of letters (``A``, ``AB``, ...), so
the chosen combination is also the predicted set for partial credit.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from patentgpt.eval.tasks import LETTERS, LoadedTask, TaskSpec, dump_yaml
from patentgpt.io import atomic_write_text

MAX_MULTI_OPTIONS = 6  # 63 combinations


def letter_combinations(n: int) -> list[str]:
    letters = LETTERS[:n]
    return ["".join(c) for k in range(1, n + 1) for c in itertools.combinations(letters, k)]


def render_prompt(spec: TaskSpec, item: dict) -> str:
    options = "\n".join(spec.option_format.replace("{letter}", LETTERS[i]).replace("{text}", text)
                        for i, text in enumerate(item["options"])) if spec.type != "true_false" else ""
    return spec.prompt[item["lang"]].replace("{question}", item["question"]).replace("{options}", options)


def prepare_doc(spec: TaskSpec, item: dict) -> dict:
    """The document lm-eval sees for one item (it keeps the item's fields for scoring)."""
    doc = dict(item, prompt=render_prompt(spec, item))
    n = len(item["options"])
    if spec.type == "multi_answer":
        if n > MAX_MULTI_OPTIONS:
            raise ValueError(f"multi_answer item {item['id']} has {n} options (at most {MAX_MULTI_OPTIONS})")
        doc["choices"] = letter_combinations(n)
        doc["target"] = "".join(LETTERS[g] for g in item["gold"])
        doc["gold_index"] = doc["choices"].index(doc["target"])
    elif spec.type == "true_false":
        doc["choices"] = list(item["options"])
        doc["gold_index"] = item["gold"][0]
        doc["target"] = item["options"][item["gold"][0]]
    elif spec.type == "open":
        doc["choices"], doc["gold_index"], doc["target"] = [], 0, item["reference"]
    else:
        doc["choices"] = list(LETTERS[:n]) if spec.choices == "letters" else list(item["options"])
        doc["gold_index"] = item["gold"][0]
        doc["target"] = LETTERS[item["gold"][0]]
    return doc


def lm_eval_config(spec: TaskSpec, lang: str, data_file: Path) -> dict:
    cfg = {
        "task": spec.lm_task_name(lang),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "doc_to_text": "prompt",
        "num_fewshot": spec.num_fewshot,
        "metadata": {"version": 1, "patentgpt_task": spec.name, "language": lang},
    }
    if spec.num_fewshot:
        cfg["fewshot_split"] = "test"
        cfg["fewshot_config"] = {"sampler": "first_n"}
    if spec.mode == "loglikelihood":
        cfg.update({
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "gold_index",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")],
        })
        return cfg
    cfg.update({
        "output_type": "generate_until",
        "doc_to_target": "target",
        "generation_kwargs": {"until": ["\n\n"], "do_sample": False, "max_gen_toks": spec.max_gen_toks},
    })
    if spec.type == "open":
        # reference-based metrics (ROUGE-L, chrF) are computed from the logged generations
        cfg["metric_list"] = [{"metric": "bypass", "aggregation": "bypass", "higher_is_better": True}]
        return cfg
    pattern = ("(" + "|".join(map(_regex_escape, spec.labels.get(lang, []))) + ")"
               if spec.type == "true_false" else r"\b([A-Z]+)\b")
    cfg["filter_list"] = [{"name": "extract", "filter": [
        {"function": "regex", "regex_pattern": pattern, "group_select": 0, "fallback": "[invalid]"},
        {"function": "take_first"}]}]
    cfg["metric_list"] = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                           "ignore_case": True, "ignore_punctuation": True}]
    return cfg


def _regex_escape(text: str) -> str:
    import re
    return re.escape(text)


def write_lm_eval_tasks(tasks: list[LoadedTask], out_dir: Path, limit: int | None = None) -> dict[str, dict]:
    """Write data and lm-eval YAMLs; returns {lm_task_name: {spec, lang, docs}} for the tasks that run."""
    out: dict[str, dict] = {}
    for task in tasks:
        if task.skipped:
            continue
        for lang, items in task.items.items():
            if not items:
                continue
            docs = [prepare_doc(task.spec, it) for it in items]
            name = task.spec.lm_task_name(lang)
            data_file = out_dir / "data" / f"{name}.jsonl"
            atomic_write_text(data_file, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
            atomic_write_text(out_dir / "tasks" / f"{name}.yaml", dump_yaml(lm_eval_config(task.spec, lang, data_file)))
            out[name] = {"spec": task.spec, "lang": lang, "docs": docs[:limit] if limit else docs}
    return out
