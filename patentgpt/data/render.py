"""The project's one way to turn a record into training text.

Used by the corpus pipeline (ingest), ``patentgpt data tokenize`` and tokenizer training, so the
tokenizer is trained on exactly the text the shards hold. A template (the pipeline's
:class:`~patentgpt.data.pipeline.config.TemplateSpec`, or any object with the same four fields;
default :data:`DEFAULT_TEMPLATE`) picks the sections of a structured patent, their order, the
section markers and headings::

    <|title|>Title: Battery management system ...
    <|abstract|>Abstract: A battery management system ...
    <|claims|>Claims:
    1. A battery management system comprising ...

The markers are the IP tokenizer's user-defined symbols (tokenizer/symbols.yaml, one token each);
headings are plain words in English or Chinese, for models whose tokenizer lacks the markers.
A plain-text record renders as its title (if any, and not the text itself) on the first line,
then its text.
"""

from __future__ import annotations

from dataclasses import dataclass

SECTION_MARKERS = {
    "title": "<|title|>",
    "abstract": "<|abstract|>",
    "claims": "<|claims|>",
    "description": "<|description|>",
    "ipc": "<|ipc|>",
}
MARKERS = {**SECTION_MARKERS, "cpc": "<|ipc|>", "date": ""}
HEADINGS = {
    "en": {"title": "Title", "abstract": "Abstract", "claims": "Claims", "description": "Description",
           "ipc": "IPC", "cpc": "CPC", "date": "Date"},
    "zh": {"title": "标题", "abstract": "摘要", "claims": "权利要求书", "description": "说明书",
           "ipc": "国际专利分类号", "cpc": "联合专利分类号", "date": "日期"},
}
STRUCTURED = ("abstract", "claims", "description")  # a record with one of these is a structured patent
_BLOCK = {"claims", "description"}  # multi-line sections start on a new line after the heading


@dataclass(frozen=True)
class PatentTemplate:
    """The fields of the pipeline's ``TemplateSpec``, for callers without a pipeline config."""

    sections: tuple[str, ...] = ("title", "abstract", "claims", "description", "ipc")
    markers: bool = True
    headings: str = "none"  # none | auto | en | zh
    separator: str = "\n"


DEFAULT_TEMPLATE = PatentTemplate()


def section_value(name: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if str(v).strip()]
        return ("; " if name in ("ipc", "cpc") else "\n").join(items)
    return str(value).strip()


def render_patent(meta: dict, template=DEFAULT_TEMPLATE, lang: str | None = None) -> str:
    """Text of a structured patent by ``template``; '' if none of its sections has text."""
    heading_lang = template.headings
    if heading_lang == "auto":
        heading_lang = "zh" if lang == "zh" else "en"
    colon = "：" if heading_lang == "zh" else ": "
    parts = []
    for name in template.sections:
        body = section_value(name, meta.get(name))
        if not body:
            continue
        prefix = MARKERS.get(name, "") if template.markers else ""
        if heading_lang != "none":
            head = HEADINGS[heading_lang][name]
            prefix += head + (("：" if heading_lang == "zh" else ":") + "\n" if name in _BLOCK else colon)
        parts.append(prefix + body)
    return template.separator.join(parts)


def render_text(meta: dict, body: str) -> str:
    """Text of a plain-text record: its title (if any and not the body itself) on the first line,
    then its text."""
    title = section_value("title", meta.get("title"))
    body = (body or "").strip()
    if title and body and title != body:
        return f"{title}\n{body}"
    return body or title


def render_record(record: dict, template=DEFAULT_TEMPLATE, text_field: str = "text") -> str:
    """Training text of a raw JSON record. A structured patent (abstract, claims or description)
    renders its sections by ``template``, followed by ``text_field`` when that is free text beyond
    the sections; any other record renders ``text_field`` after its title (a title is never
    repeated: ``text_field: title`` gives the title once). '' when nothing is there."""
    body = record.get(text_field)
    body = section_value(text_field, body) if isinstance(body, (str, list, tuple)) else ""
    if any(record.get(s) for s in STRUCTURED):
        lang = record.get("lang") if isinstance(record.get("lang"), str) else None
        parts = [render_patent(record, template, lang)]
        if text_field not in template.sections:
            parts.append(body)
        return template.separator.join(p for p in parts if p)
    if text_field == "title":
        return body
    return render_text(record, body)
