"""The project's one language detector (zh / en / other), no model needed.

Used by the pipeline's lang step (:mod:`patentgpt.data.pipeline.langid`, with the config's
thresholds) and by synth (:func:`detect_lang`). Counts letters by script: Han, kana, Hangul, Latin, other alphabets (Cyrillic, Greek, Arabic,
...). One Han character carries about as much as one English word, so Han is weighed against
Latin *words* (letters / 5): a Chinese abstract with English keywords is zh, an English patent
quoting a Chinese name is en. Kana or Hangul (Japanese, Korean) or other alphabets above a share
make a document other. Latin-script text is en when enough of its words are English function
words (the, of, and, ...), which tells English from German or French and survives OCR noise;
short Latin texts (titles) are en.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache


@lru_cache(maxsize=1)
def _default_config():
    from patentgpt.data.pipeline.config import LangConfig

    return LangConfig()


EN_FUNCTION_WORDS = frozenset(
    "the of and to a in is that for it with as by on be this or an are at which from said its "
    "may his he has have been will so not upon when one all such into being each other can".split())
_LATIN_WORD = re.compile(r"[A-Za-z]+")


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\u1100-\u11ff\uac00-\ud7af]")
_OTHER_ALPHA = re.compile(r"[\u0370-\u10ff\u1200-\u1cff]")  # Greek .. Georgian, Ethiopic .. (no Hangul jamo)
_LATIN_EXT = re.compile(r"[\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]")
_ASCII_NON_LETTERS = bytes(c for c in range(128) if not chr(c).isalpha())


def script_counts(text: str) -> dict[str, int]:
    """Letters per script. ASCII letters are counted with bytes operations (C speed); the other
    scripts with a regex scan, skipped when the text is pure ASCII."""
    ascii_letters = len(text.encode("ascii", "ignore").translate(None, _ASCII_NON_LETTERS))
    if text.isascii():
        return {"han": 0, "kana": 0, "hangul": 0, "latin": ascii_letters, "other": 0}
    return {"han": len(_HAN.findall(text)), "kana": len(_KANA.findall(text)), "hangul": len(_HANGUL.findall(text)),
            "latin": ascii_letters + len(_LATIN_EXT.findall(text)), "other": len(_OTHER_ALPHA.findall(text))}


def function_word_ratio(text: str, max_words: int = 5000) -> tuple[float, int]:
    words = _LATIN_WORD.findall(text[: max_words * 8])
    if not words:
        return 0.0, 0
    counts = Counter(w.lower() for w in words) if len(words) < 50 else Counter(words)
    hits = sum(n for w, n in counts.items() if w.lower() in EN_FUNCTION_WORDS)
    return hits / len(words), len(words)


def detect(text: str, cfg=None) -> tuple[str, dict]:
    """(language, statistics) of one text: 'zh', 'en' or 'other'. ``cfg``: the pipeline's
    :class:`~patentgpt.data.pipeline.config.LangConfig` (its thresholds; default: its defaults)."""
    if cfg is None:
        cfg = _default_config()
    c = script_counts(text)
    letters = sum(c.values())
    stats = dict(c)
    if letters < cfg.min_letters:
        return "other", stats
    if (c["kana"] + c["hangul"] + c["other"]) / letters > cfg.other_script_max_share:
        return "other", stats
    latin_words = c["latin"] / 5.0
    han_share = c["han"] / (c["han"] + latin_words) if c["han"] + latin_words else 0.0
    stats["han_share"] = round(han_share, 3)
    if han_share >= cfg.zh_min_han_share:
        return "zh", stats
    if c["latin"] == 0:
        return "other", stats
    ratio, n_words = function_word_ratio(text)
    stats["en_function_words"] = round(ratio, 3)
    if n_words < cfg.en_min_words_to_judge or ratio >= cfg.en_min_function_word_ratio:
        return "en", stats
    return "other", stats


def detect_lang(text: str) -> str | None:
    """'zh' or 'en' by :func:`detect` with default thresholds; None for anything else."""
    lang = detect(text)[0]
    return lang if lang in ("zh", "en") else None
