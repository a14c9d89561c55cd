"""Record sources shared by the SFT and reward-model stages: read a file, convert each record,
count and write what is set aside, split off the held-out share and group it by language."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from patentgpt.data.jsonl import read_json_records
from patentgpt.data.loader import holdout_split
from patentgpt.errors import DataError

# record -> (item, language, None) or (None, None, reason)
Convert = Callable[[dict], tuple[Any, str | None, str | None]]


@dataclass
class SourceSplit:
    """One source after reading: training items, held-out items by language, the accounting."""

    train: list = field(default_factory=list)
    held_by_lang: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def read_sources(specs, convert: Convert, *, holdout: float, seed: int, what: str) -> tuple[list[SourceSplit], list[dict]]:
    """Every source of ``specs`` (``name``, ``path``) converted record by record; returns the splits
    and the rejects (source, file, line, reason). A source with nothing usable is an error naming it."""
    splits, rejects = [], []
    for i, spec in enumerate(specs):
        path = Path(spec.path)
        if not path.is_file():
            raise DataError(f"data.sources[{spec.name}].path: {path} not found")
        kept, reasons, read = [], Counter(), 0
        for line, record, reason in read_json_records(path):
            read += 1
            item = lang = None
            if reason is None:
                item, lang, reason = convert(record, spec)
            if reason is not None:
                reasons[reason] += 1
                rejects.append({"source": spec.name, "file": str(path), "line": line, "reason": reason})
                continue
            kept.append((item, lang))
        report = {"read": read, "kept": len(kept), "set_aside": dict(reasons.most_common())}
        if not kept:
            raise DataError(f"data.sources[{spec.name}]: no usable {what} in {spec.path} "
                            f"(set aside: {dict(reasons.most_common(5))})")
        train_ids, held_ids = holdout_split(len(kept), holdout, seed, i)
        held: dict = {}
        for j in held_ids:
            held.setdefault(kept[j][1], []).append(kept[j][0])
        splits.append(SourceSplit([kept[j][0] for j in train_ids], dict(sorted(held.items(), key=lambda kv: str(kv[0]))),
                                  report))
    return splits, rejects


def group_name(source: str, lang: str | None, langs_in_source: int) -> str:
    return f"{source}_{lang}" if lang and langs_in_source > 1 else source


def write_rejects(path: Path, rejects: list[dict]) -> None:
    from patentgpt.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))


def report_line(report: dict) -> str:
    return "; ".join(f"{name}: {r['kept']} of {r['read']} kept" + (
        f" (set aside: {', '.join(f'{k} {v}' for k, v in r['set_aside'].items())})" if r["set_aside"] else "")
        for name, r in report.items())
