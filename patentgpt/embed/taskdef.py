"""Task definitions (YAML under ``evals/embeddings/``) and the data they name.

Paths start with ``demo://`` (the embedded demo corpus) or ``shared://`` (``../shared/data``,
``$PATENTGPT_SHARED_DATA``); a task whose shared data is absent is skipped with its reason.
Splits are deterministic functions of a key (an id, an anchor phrase) or of a field such as
``cv_fold``, so the fine-tuning recipes and the evaluation always agree on what is held out.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import model_validator

from patentgpt.config import ConfigError, Section, load_config

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "evals" / "embeddings"
DEMO_CORPUS = Path(__file__).resolve().parents[1] / "assets" / "demo_corpus"
KINDS = ("retrieval", "classification", "clustering", "similarity")


def shared_data_dir() -> Path:
    return Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))


def resolve(path: str) -> Path:
    if path.startswith("demo://"):
        return DEMO_CORPUS / path.removeprefix("demo://")
    if path.startswith("shared://"):
        return shared_data_dir() / path.removeprefix("shared://")
    return Path(path)


class SplitSpec(Section):
    """Held-out part: records whose ``field`` is in ``test_values``, else a hash of ``key``
    (a record field; default the record id) below ``test_fraction``; ``dev_fraction`` before it."""

    field: str | None = None
    test_values: list = []
    key: str | None = None
    test_fraction: float = 0.3
    dev_fraction: float = 0.0

    def part(self, record: dict, rid: str) -> str:
        if self.field:
            return "test" if record.get(self.field) in self.test_values else "train"
        u = unit_hash(str(record.get(self.key) if self.key else rid))
        return "test" if u < self.test_fraction else "dev" if u < self.test_fraction + self.dev_fraction else "train"


class DomainSpec(Section):
    """In-domain queries share a ``field`` code (cut to ``chars``) with some training-split record."""

    field: str = "ipc"
    chars: int | None = 3


class SiblingSpec(Section):
    """A derived column ``name`` for similarity rows: the ``field`` values of the other rows that share
    the ``by`` columns (in the same split part, so nothing crosses train/dev/test), joined by ``sep``;
    templates use it as ``{name}`` (e.g. the other targets of an anchor, the context a pair alone lacks)."""

    by: list[str]
    field: str
    name: str = "siblings"
    sep: str = "; "


class BlendSpec(Section):
    """A similarity score blended with what the task's other pairs say, by least squares fitted on the
    dev part and applied to the test part: the pair's own score, the mean score of the pairs that share
    its ``group_by`` columns (in the same part: is this pair high for its anchor?), and whether its two
    ``same`` columns are equal (case and spacing aside: an anchor scored against itself)."""

    group_by: list[str] = []
    same: list[str] = []

    @model_validator(mode="after")
    def _check(self):
        if not self.group_by and not self.same:
            raise ValueError("blend: name group_by columns, two same columns, or both")
        if self.same and len(self.same) != 2:
            raise ValueError(f"blend.same: name two columns to compare, got {len(self.same)}")
        return self


class TaskConfig(Section):
    name: str
    kind: Literal["retrieval", "classification", "clustering", "similarity"]
    data: list[str]
    description: str = ""
    limit: int | None = None
    view: str = "title+abstract+claims"
    prefix: str = ""
    markers: bool | None = None      # section markers in the text; default: only for decoder models
    split: SplitSpec = SplitSpec()
    eval_part: Literal["test", "dev"] = "test"   # scored part: test, or dev for choices (model selection)
    # classification / clustering
    labels: str = "ipc"
    label_chars: int | None = None
    min_label_count: int = 2
    # retrieval: queries under query_view against documents under view
    query_view: str = "title"
    query_prefix: str = ""
    qrels: str | None = None         # TREC qrels (qid iter docid rel) over the records of `data`; needs `queries`
    queries: str | None = None       # TSV (qid<TAB>text) or JSONL (id + query_view); default: held-out records
    domain: DomainSpec | None = None
    bm25: bool = True
    fusion_alpha: float = 0.5
    rrf_k: int = 60
    # similarity (CSV rows): text templates over the row's columns
    text_a: str = "{anchor}"
    text_b: str = "{target}"
    score: str = "label"
    siblings: SiblingSpec | None = None
    blend: BlendSpec | None = None

    @model_validator(mode="after")
    def _check(self):
        from patentgpt.embed.views import parse_view

        parse_view(self.view), parse_view(self.query_view)
        if not self.data:
            raise ValueError("data: name at least one file")
        if (self.qrels is None) != (self.queries is None):
            raise ValueError("qrels: a task with judgements names both `qrels` and `queries`")
        if self.qrels is not None and self.kind != "retrieval":
            raise ValueError(f"qrels: only retrieval tasks read judgements, this task is {self.kind}")
        if self.blend and (self.kind != "similarity" or not self.split.dev_fraction):
            raise ValueError("blend: fitted on the dev part of a similarity task; this task "
                             + ("has no dev part (set split.dev_fraction)" if self.kind == "similarity" else f"is {self.kind}"))
        if not 0.0 <= self.fusion_alpha <= 1.0:
            raise ValueError("fusion_alpha: must be in [0, 1]")
        return self

    def missing(self) -> list[Path]:
        files = [*self.data, *(f for f in (self.qrels, self.queries) if f)]
        return [p for p in map(resolve, files) if not p.is_file()]


def load_task(path: str | Path, overrides=()) -> TaskConfig:
    return load_config(TaskConfig, path, overrides)


def find_tasks(names: list[str]) -> list[Path]:
    """Task files by path, or by name under evals/embeddings/."""
    out = []
    for n in names or sorted(p.stem for p in TASK_DIR.glob("*.yaml")):
        p = Path(n)
        if not p.suffix:
            p = TASK_DIR / f"{n}.yaml"
        if not p.is_file():
            raise ConfigError(f"tasks: no task file {p} (tasks live in {TASK_DIR})")
        out.append(p)
    return out


def unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64


def label_list(record: dict, field: str, chars: int | None) -> list[str]:
    value = record.get(field)
    values = value if isinstance(value, (list, tuple)) else [value] if value not in (None, "") else []
    out = []
    for v in values:
        code = str(v).strip()[:chars] if chars else str(v).strip()
        if code and code not in out:
            out.append(code)
    return out


def read_pairs(path: Path, cfg: TaskConfig) -> tuple[list[dict], list[dict]]:
    """Similarity rows of a CSV as {a, b, score, key, part}; rows with a bad score or a missing
    column are set aside with a reason."""
    raw, rejects = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), 2):
            try:
                score = float(row[cfg.score])
            except KeyError as exc:
                raise ConfigError(f"{cfg.name}: column {exc} named by score is not in {path}") from None
            except (TypeError, ValueError):
                rejects.append({"line": lineno, "reason": "bad_score"})
                continue
            key = str(row.get(cfg.split.key) if cfg.split.key else row.get("id", lineno))
            raw.append((row, score, cfg.split.part(row, key)))
    if cfg.siblings:
        add_siblings(raw, cfg.siblings, path)
    rows = []
    for row, score, part in raw:
        try:
            a, b = cfg.text_a.format(**row), cfg.text_b.format(**row)
        except KeyError as exc:
            raise ConfigError(f"{cfg.name}: column {exc} named by text_a/text_b is not in {path}") from None
        rows.append({"a": a, "b": b, "score": score, "part": part, **blend_keys(row, cfg, path)})
    return rows, rejects


def read_task_pairs(cfg: TaskConfig) -> tuple[list[dict], list[dict]]:
    """The similarity rows of every data file of ``cfg`` (each row names its split ``part``), and the rejects."""
    rows, rejects = [], []
    for path in map(resolve, cfg.data):
        r, rej = read_pairs(path, cfg)
        rows += r
        rejects += rej
    return rows, rejects


def blend_keys(row: dict, cfg: TaskConfig, path: Path) -> dict:
    """The columns a blend reads from a CSV row: its ``group`` key and whether its ``same`` columns match."""
    if not cfg.blend:
        return {}
    try:
        out = {"group": tuple(row[c] for c in cfg.blend.group_by)}
        if cfg.blend.same:
            a, b = (" ".join((row[c] or "").lower().split()) for c in cfg.blend.same)
            out["same"] = a == b
    except KeyError as exc:
        raise ConfigError(f"blend: column {exc} is not in {path}") from None
    return out


def add_siblings(raw: list[tuple[dict, float, str]], spec: SiblingSpec, path: Path) -> None:
    groups: dict[tuple, list[str]] = {}
    for row, _, part in raw:
        try:
            key, value = (part, *(row[c] for c in spec.by)), row[spec.field]
        except KeyError as exc:
            raise ConfigError(f"siblings: column {exc} is not in {path}") from None
        if value not in groups.setdefault(key, []):
            groups[key].append(value)
    for row, _, part in raw:
        mates = groups[(part, *(row[c] for c in spec.by))]
        row[spec.name] = spec.sep.join(v for v in mates if v != row[spec.field])
