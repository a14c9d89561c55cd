"""Text views of structured patents (``title+abstract+claims``, ``first_claim``, ...).

Rendering goes through the project's one renderer (:func:`patentgpt.data.render.render_record`);
a view only chooses which sections it renders, in which order, with or without the section
markers of the IP tokenizer (useful for our decoders, noise for other encoders).
"""

from __future__ import annotations

from pathlib import Path

from patentgpt.config import ConfigError
from patentgpt.data.render import SECTION_MARKERS, PatentTemplate, render_record

SECTIONS = ("title", "abstract", "claims", "first_claim", "description", "text")
ID_FIELDS = ("id", "publication_number", "patent_number", "publication_numbers", "sent_id")


def parse_view(view: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in view.split("+") if p.strip())
    bad = [p for p in parts if p not in SECTIONS]
    if not parts or bad:
        raise ConfigError(f"view: unknown section(s) {bad or [view]} in {view!r}; "
                          f"use sections among {', '.join(SECTIONS)} joined by '+'")
    return parts


def render_view(record: dict, view: str | tuple[str, ...], markers: bool = False) -> str:
    """The text of ``record`` under ``view``; '' when the record has none of its sections."""
    sections = parse_view(view) if isinstance(view, str) else view
    if "first_claim" in sections:
        claims = record.get("claims")
        first = claims[0] if isinstance(claims, (list, tuple)) and claims else claims
        record = {**record, "first_claim": first}
    template = PatentTemplate(sections=sections, markers=dict(SECTION_MARKERS) if markers else {})
    # Plain-text records render their `text` only when the view asks for it.
    return render_record(record, template, text_field="text" if "text" in sections else "\0")


def record_id(record: dict, id_field: str | None = None) -> str | None:
    for key in (id_field,) if id_field else ID_FIELDS:
        value = record.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value not in (None, ""):
            return str(value)
    return None


def read_view_texts(path: str | Path, view: str, *, markers: bool = False, id_field: str | None = None,
                    limit: int | None = None) -> tuple[list[str], list[str], list[dict]]:
    """(ids, texts, rejects) of a JSONL file; records without an id or without text under the view
    are set aside with a reason, never silently dropped."""
    from patentgpt.data.jsonl import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    sections = parse_view(view)
    ids, texts, rejects, seen = [], [], [], set()
    for lineno, record, reason in iter_jsonl(path):
        if limit is not None and len(ids) >= limit:
            break
        rid = record_id(record, id_field) if record is not None else None
        text = render_view(record, sections, markers) if record is not None else ""
        if reason is None:
            reason = ("no_id" if rid is None else "duplicate_id" if rid in seen
                      else "empty_view" if not text.strip() else None)
        if reason:
            rejects.append({"line": lineno, "reason": reason})
            continue
        seen.add(rid)
        ids.append(rid)
        texts.append(text)
    return ids, texts, rejects

