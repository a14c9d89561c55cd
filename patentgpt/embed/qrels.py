"""TREC relevance judgements and query files for retrieval tasks that name their own judgements.

``qrels`` lines are ``qid iter docid rel`` (whitespace-separated, ``iter`` ignored, ``rel`` an
integer grade, 0 = judged not relevant); blank lines and ``#`` comments are skipped. ``queries``
are either TSV (``qid<TAB>text``, the BEIR / MS MARCO layout) or JSONL records (an id field and
the task's ``query_view``, e.g. ``title`` or ``text``). A line that cannot be used is never
dropped silently: it is set aside with its file, line number and reason, and the task counts them.
"""

from __future__ import annotations

from pathlib import Path

from patentgpt.embed.views import record_id, render_view


def read_qrels(path: str | Path, query_ids=None, doc_ids=None) -> tuple[dict[str, dict[str, int]], list[dict]]:
    """({qid: {docid: rel}}, rejects). With ``query_ids`` / ``doc_ids``, judgements naming an unknown
    query or document are set aside (``unknown_query``, ``unknown_doc``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"qrels: file not found: {path}")
    qset = None if query_ids is None else set(query_ids)
    dset = None if doc_ids is None else set(doc_ids)
    qrels: dict[str, dict[str, int]] = {}
    rejects = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            reason = None
            if len(fields) != 4:
                reason = f"expected 4 fields (qid iter docid rel), got {len(fields)}"
            else:
                qid, _, docid, rel = fields
                try:
                    grade = int(rel)
                except ValueError:
                    reason = f"relevance {rel!r} is not an integer"
                else:
                    if qset is not None and qid not in qset:
                        reason = "unknown_query"
                    elif dset is not None and docid not in dset:
                        reason = "unknown_doc"
                    elif docid in qrels.get(qid, {}):
                        reason = "duplicate_judgement"
            if reason:
                rejects.append({"file": path.name, "line": lineno, "reason": reason})
                continue
            qrels.setdefault(qid, {})[docid] = grade
    return qrels, rejects


def read_queries(path: str | Path, view: str, markers: bool = False) -> tuple[list[tuple[str, str, dict]], list[dict]]:
    """([(qid, text, record)], rejects) from a TSV (``qid<TAB>text``) or JSONL query file; a JSONL
    record keeps its fields (an in/out-of-domain split can read its labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"queries: file not found: {path}")
    out, rejects, seen = [], [], set()

    def add(lineno, qid, text, reason=None, record=None):
        reason = reason or ("no_id" if not qid else "duplicate_query" if qid in seen
                            else "empty_query" if not (text or "").strip() else None)
        if reason:
            rejects.append({"file": path.name, "line": lineno, "reason": reason})
        else:
            seen.add(qid)
            out.append((qid, text, record or {"id": qid}))

    if path.suffix == ".jsonl":
        from patentgpt.data.jsonl import iter_jsonl

        for lineno, record, reason in iter_jsonl(path):
            if record is None:
                add(lineno, None, None, reason)
            else:
                add(lineno, record_id(record) or record.get("_id") or record.get("qid"),
                    render_view(record, view, markers), reason, record)
        return out, rejects
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            qid, tab, text = line.partition("\t")
            add(lineno, qid.strip(), text.strip(), None if tab else "expected qid<TAB>text")
    return out, rejects
