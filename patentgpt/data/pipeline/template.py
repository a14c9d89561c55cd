"""Render a structured patent (the ``meta`` of a document record) into training text.

The section markers are the IP tokenizer's user-defined symbols (:data:`patentgpt.data.render.
SECTION_MARKERS`, one token each); headings are plain words in English or Chinese, for models
whose tokenizer lacks the markers. A template picks the sections and their order::

    <|title|>Title: Battery management system ...
    <|abstract|>Abstract: A battery management system ...
    <|claims|>Claims:
    1. A battery management system comprising ...
"""

from __future__ import annotations

from patentgpt.data.render import SECTION_MARKERS

HEADINGS = {
    "en": {"title": "Title", "abstract": "Abstract", "claims": "Claims", "description": "Description",
           "ipc": "IPC", "cpc": "CPC", "date": "Date"},
    "zh": {"title": "标题", "abstract": "摘要", "claims": "权利要求书", "description": "说明书",
           "ipc": "国际专利分类号", "cpc": "联合专利分类号", "date": "日期"},
}
MARKERS = {**SECTION_MARKERS, "cpc": "<|ipc|>", "date": ""}
_BLOCK = {"claims", "description"}  # multi-line sections start on a new line after the heading


def _section_value(name: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if str(v).strip()]
        return ("; " if name in ("ipc", "cpc") else "\n").join(items)
    return str(value).strip()


def render_patent(meta: dict, template, lang: str | None) -> str:
    """Text of a structured patent by ``template`` (a :class:`~.config.TemplateSpec`); '' if empty."""
    heading_lang = template.headings
    if heading_lang == "auto":
        heading_lang = "zh" if lang == "zh" else "en"
    colon = "：" if heading_lang == "zh" else ": "
    parts = []
    for name in template.sections:
        body = _section_value(name, meta.get(name))
        if not body:
            continue
        prefix = MARKERS.get(name, "") if template.markers else ""
        if heading_lang != "none":
            head = HEADINGS[heading_lang][name]
            if name in _BLOCK:
                prefix += head + ("：" if heading_lang == "zh" else ":") + "\n"
            else:
                prefix += head + colon
        parts.append(prefix + body)
    return template.separator.join(parts)


def render_text(meta: dict, body: str) -> str:
    """Text of a plain-text record: its title (if any) on the first line, then its text."""
    title = _section_value("title", meta.get("title"))
    body = body.strip()
    return f"{title}\n{body}" if title and body else (body or title)
