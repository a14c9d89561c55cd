"""Task definitions (``evals/**/NAME.yaml``): schema, loading and item normalisation.

One YAML file per benchmark names its data file and how the file's fields map onto the task;
a new benchmark in a known format is a new YAML file, no code. Every record becomes a canonical
*item*::

    {id, lang, question, options: [text...], gold: [index...], points, reference}

Records that do not fit (no question, an answer letter with no option, a language the task
does not list...) are set aside and counted by reason, never silently dropped.

Data paths are relative to the repository root (``../shared/data/...`` reaches the shared data,
or ``$PATENTGPT_SHARED_DATA`` when set; ``$VARS`` are expanded). A task whose data file is absent is *skipped* with a message, so MMLU,
C-Eval or the shared patent-bar set run when their data is present and are skipped otherwise.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from patentgpt.config import ConfigError, Section, load_config

REPO = Path(__file__).resolve().parents[2]
EVALS_DIR = REPO / "evals"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHARED_PREFIX = "../shared/data/"
DEFAULT_TF_LABELS = {"en": ["True", "False"], "zh": ["正确", "错误"]}


class DataSpec(Section):
    path: str = Field(..., description="file or glob, relative to the repository root")
    format: Literal["auto", "jsonl", "json", "csv"] = "auto"
    json_field: str | None = Field(None, description="format json: key of the record list")
    csv_columns: list[str] | None = Field(None, description="csv without a header row: its column names")


class FieldSpec(Section):
    question: str = "problem"
    options: str | list[str] | None = Field(
        "candidates", description="a {letter: text} dict field, a list field, or a list of columns (MMLU: [A,B,C,D])")
    answer: str = "answer"
    language: str | None = Field("language", description="record field holding zh/en (null: the task's first language)")
    id: str | None = None
    points: str | None = Field(None, description="field with the item's exam points (default 1)")


class ExamSpec(Section):
    pass_mark: float = Field(60.0, ge=0, le=100, description="pass mark on the 0-100 exam score")
    partial_credit: bool = Field(True, description="a subset of the right options, with no wrong one, earns "
                                 "the share of right options it names; any wrong option earns 0")


class TaskSpec(Section):
    name: str
    description: str = ""
    type: Literal["multiple_choice", "multi_answer", "true_false", "open"]
    data: DataSpec
    fields: FieldSpec = Field(default_factory=FieldSpec)
    answer_type: Literal["letter", "letters", "index", "indices", "bool", "text"] = "letter"
    languages: list[Literal["en", "zh"]] = Field(default_factory=lambda: ["en"], min_length=1)
    prompt: dict[str, str] = Field(..., description="per language; {question} and {options} are filled in")
    option_format: str = "{letter}. {text}"
    choices: Literal["letters", "texts"] = Field(
        "letters", description="what log-likelihood scores after the prompt: the letter or the option text")
    labels: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_TF_LABELS),
                                         description="true_false: the [true, false] answer words per language")
    mode: Literal["loglikelihood", "generate"] = "loglikelihood"
    max_gen_toks: int = Field(64, ge=1)
    num_fewshot: int = Field(0, ge=0)
    metrics: list[Literal["acc", "acc_norm", "exact_match", "partial", "exam_score",
                          "rouge_l", "chrf", "judge_win_rate"]] = Field(default_factory=lambda: ["acc", "acc_norm"])
    exam: ExamSpec | None = None

    @model_validator(mode="after")
    def _check(self):
        missing = [lang for lang in self.languages if lang not in self.prompt]
        if missing:
            raise ValueError(f"prompt: no template for language(s) {missing}")
        if self.type == "multi_answer" and self.answer_type not in ("letters", "indices"):
            raise ValueError("answer_type: multi_answer needs letters or indices")
        if self.type == "true_false" and self.answer_type != "bool":
            raise ValueError("answer_type: true_false needs bool")
        if self.type == "open" and self.answer_type != "text":
            raise ValueError("answer_type: open needs text")
        if self.type == "open" and self.mode != "generate":
            raise ValueError("mode: open questions need generate")
        if "exam_score" in self.metrics and self.exam is None:
            raise ValueError("exam: exam_score needs an exam section (pass_mark)")
        return self

    def lm_task_name(self, lang: str) -> str:
        return f"{self.name}_{lang}" if len(self.languages) > 1 else self.name


@dataclass
class LoadedTask:
    spec: TaskSpec
    source: Path
    items: dict[str, list[dict]] = field(default_factory=dict)  # language -> items
    rejected: Counter = field(default_factory=Counter)
    skipped: str | None = None  # why the task did not run (data absent)


# ------------------------------------------------------------------------------------ locating
# evals/embeddings/ holds the embedding tasks of `patentgpt embed eval`, evals/long_context/ those of
# `patentgpt eval long-context` (other schemas)
OTHER_HARNESSES = ("embeddings", "long_context")


def task_files(root: Path = EVALS_DIR) -> dict[str, Path]:
    """Every task YAML under ``root`` by task name (the file's stem), the embedding tasks excepted."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        if path.relative_to(root).parts[0] in OTHER_HARNESSES:
            continue
        if path.stem in out:
            raise ConfigError(f"tasks: two task files named {path.stem}: {out[path.stem]} and {path}")
        out[path.stem] = path
    return out


def resolve_task(name: str, root: Path = EVALS_DIR) -> Path:
    """A task name (``ipquiz``) or a path to a task YAML."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    known = task_files(root)
    if name not in known:
        raise ConfigError(f"tasks: unknown task {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def load_spec(path: Path) -> TaskSpec:
    spec = load_config(TaskSpec, path)
    if spec.name != path.stem:
        raise ConfigError(f"name: task {spec.name!r} must match its file name {path.name} ({path})")
    return spec


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, or ``$PATENTGPT_SHARED_DATA`` (as the tests use)."""
    return Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))


def data_paths(spec: TaskSpec) -> list[Path]:
    pattern = os.path.expandvars(spec.data.path)
    if pattern.startswith(SHARED_PREFIX):
        pattern = str(shared_data_dir() / pattern[len(SHARED_PREFIX):])
    pattern = pattern if os.path.isabs(pattern) else str(REPO / pattern)
    return [Path(p) for p in sorted(glob.glob(pattern))]


# ------------------------------------------------------------------------------------- reading
def read_records(spec: TaskSpec, path: Path) -> list[dict]:
    fmt = spec.data.format
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}.get(path.suffix.lower())
        if fmt is None:
            raise ConfigError(f"data.format: cannot tell the format of {path}; set data.format")
    if fmt == "jsonl":
        records = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"data.path: {path}:{lineno}: invalid JSON ({exc.msg})") from None
        return records
    if fmt == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if spec.data.json_field:
            data = data.get(spec.data.json_field) if isinstance(data, dict) else None
        if not isinstance(data, list):
            raise ConfigError(f"data.json_field: {path} holds no list of records"
                              + (f" under {spec.data.json_field!r}" if spec.data.json_field else ""))
        return data
    with open(path, encoding="utf-8", newline="") as fh:
        if spec.data.csv_columns:
            return [dict(zip(spec.data.csv_columns, row)) for row in csv.reader(fh)]
        return list(csv.DictReader(fh))


def _options(spec: TaskSpec, rec: dict) -> tuple[list[str], list[str]] | None:
    """(letters, texts) of a record's options, or None when they cannot be read."""
    ref = spec.fields.options
    if isinstance(ref, list):
        texts = [rec.get(col) for col in ref]
        if any(t is None or str(t).strip() == "" for t in texts):
            return None
        return list(LETTERS[: len(texts)]), [str(t) for t in texts]
    value = rec.get(ref) if ref else None
    if isinstance(value, dict):
        letters = sorted(str(k).strip().upper() for k in value)
        if not letters or any(k not in LETTERS for k in letters):
            return None
        by_letter = {str(k).strip().upper(): str(v) for k, v in value.items()}
        return letters, [by_letter[k] for k in letters]
    if isinstance(value, list) and value:
        return list(LETTERS[: len(value)]), [str(v) for v in value]
    return None


def _gold(spec: TaskSpec, raw, letters: list[str]) -> list[int] | None:
    kind = spec.answer_type
    try:
        if kind in ("letter", "letters"):
            picked = [c for c in str(raw).upper() if c in LETTERS] if isinstance(raw, str) else \
                [str(x).strip().upper() for x in raw] if isinstance(raw, list) else []
            gold = sorted({letters.index(c) for c in picked}) if all(c in letters for c in picked) else None
        elif kind in ("index", "indices"):
            values = raw if isinstance(raw, list) else [raw]
            gold = sorted({int(v) for v in values})
            gold = gold if all(0 <= g < len(letters) for g in gold) else None
        else:
            return None
    except (TypeError, ValueError):
        return None
    if not gold or (kind in ("letter", "index") and len(gold) != 1):
        return None
    return gold


def _bool(raw) -> bool | None:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "t", "yes", "1", "正确", "对", "是"):
        return True
    if text in ("false", "f", "no", "0", "错误", "错", "否"):
        return False
    return None


def normalise(spec: TaskSpec, records: list[dict], source: str = "") -> tuple[dict[str, list[dict]], Counter]:
    """Records -> items per language; the Counter holds why each set-aside record was rejected."""
    items: dict[str, list[dict]] = {lang: [] for lang in spec.languages}
    rejected: Counter = Counter()
    f = spec.fields
    for n, rec in enumerate(records):
        if not isinstance(rec, dict):
            rejected["not_a_record"] += 1
            continue
        question = rec.get(f.question)
        if not isinstance(question, str) or not question.strip():
            rejected["no_question"] += 1
            continue
        lang = str(rec.get(f.language) or "").strip().lower() if f.language else spec.languages[0]
        lang = {"english": "en", "chinese": "zh", "zh-cn": "zh"}.get(lang, lang)
        if lang not in items:
            rejected[f"language_not_in_task:{lang or 'none'}"] += 1
            continue
        item = {"id": str(rec.get(f.id)) if f.id and rec.get(f.id) is not None else f"{source}{n}",
                "lang": lang, "question": question.strip(), "options": [], "gold": [], "points": 1.0,
                "reference": ""}
        if f.points and rec.get(f.points) is not None:
            try:
                item["points"] = float(rec[f.points])
            except (TypeError, ValueError):
                rejected["bad_points"] += 1
                continue
        if spec.type == "true_false":
            value = _bool(rec.get(f.answer))
            if value is None:
                rejected["bad_answer"] += 1
                continue
            item["options"] = list(spec.labels.get(lang, DEFAULT_TF_LABELS["en"]))
            item["gold"] = [0 if value else 1]
        elif spec.type == "open":
            ref = rec.get(f.answer)
            if not isinstance(ref, str) or not ref.strip():
                rejected["no_reference_answer"] += 1
                continue
            item["reference"] = ref.strip()
        else:
            opts = _options(spec, rec)
            if opts is None:
                rejected["bad_options"] += 1
                continue
            letters, texts = opts
            gold = _gold(spec, rec.get(f.answer), letters)
            if gold is None:
                rejected["bad_answer"] += 1
                continue
            item["options"], item["gold"] = texts, gold
        items[lang].append(item)
    return items, rejected


def load_task(name_or_path: str, root: Path = EVALS_DIR) -> LoadedTask:
    """Read a task file and its data; ``skipped`` is set (not raised) when the data is absent."""
    path = resolve_task(name_or_path, root)
    spec = load_spec(path)
    task = LoadedTask(spec=spec, source=path)
    files = data_paths(spec)
    if not files:
        task.skipped = f"data not found: {spec.data.path} (resolved from {REPO})"
        return task
    for lang in spec.languages:
        task.items[lang] = []
    for file in files:
        prefix = f"{file.stem}:" if len(files) > 1 else ""
        items, rejected = normalise(spec, read_records(spec, file), prefix)
        for lang, its in items.items():
            task.items[lang].extend(its)
        task.rejected.update(rejected)
    if not any(task.items.values()):
        task.skipped = f"no usable items in {spec.data.path} (set aside: {dict(task.rejected)})"
    return task


def dump_yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)
