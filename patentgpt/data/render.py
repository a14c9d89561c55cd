"""Render corpus records (plain text or structured patents) into training text."""

from __future__ import annotations

from dataclasses import dataclass, field

# Section markers are user-defined symbols of the IP tokenizer (tokenizer/symbols.yaml),
# so each is a single token and never split.
SECTION_MARKERS = {
    "title": "<|title|>",
    "abstract": "<|abstract|>",
    "claims": "<|claims|>",
    "description": "<|description|>",
    "ipc": "<|ipc|>",
}


@dataclass(frozen=True)
class PatentTemplate:
    """Which sections of a structured patent become text, in which order, with which markers."""

    sections: tuple[str, ...] = ("title", "abstract", "claims", "description", "ipc")
    markers: dict = field(default_factory=lambda: dict(SECTION_MARKERS))
    separator: str = "\n"


DEFAULT_TEMPLATE = PatentTemplate()


def _section_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def render_record(record: dict, template: PatentTemplate = DEFAULT_TEMPLATE, text_field: str = "text") -> str:
    """A record with ``text_field`` renders as that text (after its title, if any);
    a structured patent renders its sections with markers. Returns '' when nothing is there."""
    if text_field in record and not any(record.get(s) for s in ("abstract", "claims", "description")):
        body = _section_text(record.get(text_field))
        title = _section_text(record.get("title"))
        return f"{title}\n{body}" if title and body else (body or title)
    parts = []
    for name in template.sections:
        text = _section_text(record.get(name))
        if text:
            marker = template.markers.get(name, "")
            parts.append(f"{marker}{text}")
    return template.separator.join(parts)
