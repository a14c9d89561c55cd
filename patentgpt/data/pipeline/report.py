"""Accounting: every record read is kept or removed with one reason, and the numbers must add up.

Each step keeps a :class:`Ledger`: per source, how many records came in, how many it kept and how
many it removed for each reason, with every removal written to the step's ``rejects.jsonl``
(reason, source, location, id and a short excerpt). Counts are in *records*: a document joined
from several records (``group_by``) counts as ``meta.records`` of them.

:func:`build_report` chains the ledgers of all steps into ``report.json`` and checks, per source
and in total, ``read == kept + sum(removed)``; it refuses to write a report that does not add up.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from patentgpt.data.pipeline.docstore import JsonlWriter

EXCERPT = 160


def nrec(doc: dict) -> int:
    """How many input records a document stands for."""
    return int(doc.get("meta", {}).get("records", 1))


class AccountingError(AssertionError):
    """The pipeline lost or invented records: a bug, never a data problem."""


class Ledger:
    """Counts of one step, plus its rejects file."""

    def __init__(self, rejects_path: str | Path | None):
        self._rejects = JsonlWriter(rejects_path) if rejects_path is not None else None
        self.incoming: Counter = Counter()
        self.kept: Counter = Counter()
        self.removed: dict[str, Counter] = defaultdict(Counter)
        self.file_issues: list[dict] = []

    def take(self, source: str, n: int = 1) -> None:
        self.incoming[source] += n

    def keep(self, source: str, n: int = 1) -> None:
        self.kept[source] += n

    def reject(self, source: str, reason: str, *, loc: str, n: int = 1, doc_id: str | None = None,
               text: str | None = None, **detail) -> None:
        self.removed[source][reason] += n
        if self._rejects is not None:
            row = {"reason": reason, "source": source, "loc": loc}
            if doc_id is not None:
                row["id"] = doc_id
            if n != 1:
                row["records"] = n
            row.update({k: v for k, v in detail.items() if v is not None})
            if text is not None:
                row["excerpt"] = text[:EXCERPT]
            self._rejects.write(row)

    def reject_doc(self, doc: dict, reason: str, **detail) -> None:
        self.reject(doc["source"], reason, loc=doc["loc"], n=nrec(doc), doc_id=doc.get("id"),
                    text=doc.get("text"), **detail)

    def file_issue(self, source: str, path: str, reason: str, detail: str = "") -> None:
        """A whole file that gave no records (empty, unreadable): no record to count, but reported."""
        self.file_issues.append({"source": source, "path": path, "reason": reason, "detail": detail})
        if self._rejects is not None:
            self._rejects.write({"reason": reason, "source": source, "loc": f"{path}:0", "detail": detail})

    def counts(self) -> dict:
        """The counters (JSON-able), for a partition's ledger to be merged by :meth:`absorb`."""
        return {"incoming": dict(self.incoming), "kept": dict(self.kept),
                "removed": {s: dict(c) for s, c in self.removed.items()}}

    def absorb(self, counts: dict, rejects_file: str | Path | None = None) -> None:
        """Add a partition ledger's :meth:`counts` and append its rejects file (in partition order)."""
        self.incoming.update(counts["incoming"])
        self.kept.update(counts["kept"])
        for source, reasons in counts["removed"].items():
            self.removed[source].update(reasons)
        if rejects_file is not None and self._rejects is not None and Path(rejects_file).is_file():
            with open(rejects_file, encoding="utf-8") as fh:
                for line in fh:
                    self._rejects.write_line(line.rstrip("\n"))

    def close(self) -> None:
        if self._rejects is not None:
            self._rejects.close()

    def stats(self) -> dict:
        sources = sorted(set(self.incoming) | set(self.kept) | set(self.removed))
        out = {}
        for s in sources:
            removed = dict(sorted(self.removed[s].items()))
            out[s] = {"in": self.incoming[s], "kept": self.kept[s], "removed": removed}
            if self.incoming[s] != self.kept[s] + sum(removed.values()):
                raise AccountingError(f"source {s}: in {self.incoming[s]} != kept {self.kept[s]} + removed "
                                      f"{sum(removed.values())} {removed}")
        return {"sources": out, "file_issues": self.file_issues}


def build_report(step_stats: dict[str, dict], source_names: list[str]) -> dict:
    """Chain per-step ledgers (in step order) into the run's record accounting.

    ``step_stats[step]['sources'][src]`` holds ``in``/``kept``/``removed``. The first step's
    ``in`` is what was read; each later step must take in exactly what the one before kept.
    """
    steps = [s for s, st in step_stats.items() if "sources" in st]
    per_source = {}
    for src in source_names:
        removed: Counter = Counter()
        read = None
        prev_kept = None
        for step in steps:
            row = step_stats[step]["sources"].get(src, {"in": 0, "kept": 0, "removed": {}})
            if read is None:
                read = row["in"]
            elif row["in"] != prev_kept:
                raise AccountingError(f"source {src}: step {step} took in {row['in']} records but the step "
                                      f"before kept {prev_kept}")
            for reason, n in row["removed"].items():
                removed[reason] += n
            prev_kept = row["kept"]
        read = read or 0
        kept = prev_kept or 0
        if read != kept + sum(removed.values()):
            raise AccountingError(f"source {src}: read {read} != kept {kept} + removed {sum(removed.values())}")
        per_source[src] = {"read": read, "kept": kept, "removed": dict(sorted(removed.items()))}
    total_removed: Counter = Counter()
    for row in per_source.values():
        total_removed.update(row["removed"])
    total = {
        "read": sum(r["read"] for r in per_source.values()),
        "kept": sum(r["kept"] for r in per_source.values()),
        "removed": dict(sorted(total_removed.items())),
    }
    if total["read"] != total["kept"] + sum(total["removed"].values()):
        raise AccountingError(f"total: read {total['read']} != kept + removed")
    by_step = {}
    for step in steps:
        agg: Counter = Counter()
        for src in step_stats[step]["sources"].values():
            agg.update(src["removed"])
        by_step[step] = dict(sorted(agg.items()))
    file_issues = [issue for st in step_stats.values() for issue in st.get("file_issues", [])]
    return {"total": total, "sources": per_source, "removed_by_step": by_step, "file_issues": file_issues,
            "invariant": "read == kept + sum(removed), checked per source and in total"}
