"""The pipeline's lang step: tag each document zh / en / other with the project's detector
(:func:`patentgpt.data.lang.detect`, thresholds from the config's ``lang`` section). A declared language (source ``lang`` or a
record field) wins with ``trust_declared: true``.
"""

from __future__ import annotations

from patentgpt.data.lang import detect
from patentgpt.data.pipeline.config import LangConfig


def tag_doc(doc: dict, cfg: LangConfig) -> dict:
    """Set ``doc['lang']`` (and ``meta.lang_stats``); keeps a declared language if told to trust it."""
    declared = doc.get("meta", {}).get("declared_lang")
    if cfg.trust_declared and declared in ("zh", "en", "other"):
        doc["lang"] = declared
        return doc
    lang, stats = detect(doc["text"], cfg)
    doc["lang"] = lang
    doc.setdefault("meta", {})["lang_stats"] = stats
    return doc
