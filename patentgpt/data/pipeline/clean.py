"""Clean: Unicode normalization, control characters, HTML/XML remnants, CSV quoting, USPTO
text markup, OCR hyphenation and broken lines, whitespace.

Normalization is **NFC**, not NFKC, by default. NFKC would rewrite Chinese full-width
punctuation (``，：；（）`` -> ``,:;()``), which is the correct typography of Chinese patents, and
fold technical super/subscripts (``mm²`` -> ``mm2``, ``10⁻³`` -> ``10-3``), which changes their
meaning. The useful parts of NFKC are applied on their own: full-width Latin letters and digits
(``ＡＢＣ１２３`` -> ``ABC123``), Latin ligatures (``ﬁ`` -> ``fi``) and compatibility spaces
(no-break, thin, ideographic) -> a plain space. ``normalization: nfkc`` is there for who wants it.

The same cleaning applies to the document text and to the structured text fields in ``meta``
(title, abstract, claims, description), which the synthesis step reads.
"""

from __future__ import annotations

import html
import re
import unicodedata

from patentgpt.data.pipeline.config import CleanConfig

# ------------------------------------------------------------------------------ character tables
_FOLD_FULLWIDTH = {c: c - 0xFEE0 for r in ((0xFF10, 0xFF1A), (0xFF21, 0xFF3B), (0xFF41, 0xFF5B))
                   for c in range(*r)}
_FOLD_LIGATURES = {0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "st",
                   0xFB06: "st"}
_SPACES = {c: " " for c in (0x00A0, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000, 0x0009, 0x000B)}
_CONTROLS = {c: None for c in (*range(0x00, 0x09), 0x0E, 0x0F, *range(0x10, 0x20), 0x7F, *range(0x80, 0xA0),
                               0x00AD, 0x200B, 0x200E, 0x200F, 0x2060, 0xFEFF, *range(0xE000, 0xF900))}
_CONTROLS.update({0x0C: "\n\n", 0x0D: "\n", 0x2028: "\n", 0x2029: "\n\n"})


def _table(cfg: CleanConfig) -> dict:
    table = dict(_SPACES)
    if cfg.remove_control:
        table.update(_CONTROLS)
    if cfg.fold_fullwidth_alnum:
        table.update(_FOLD_FULLWIDTH)
    if cfg.fold_ligatures:
        table.update(_FOLD_LIGATURES)
    return {chr(k): (chr(v) if isinstance(v, int) else (v or "")) for k, v in table.items()}


def _char_class(codes) -> str:
    """A regex character class matching exactly these code points (ranges merged)."""
    codes = sorted(set(codes))
    parts, start, prev = [], codes[0], codes[0]
    for c in codes[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(re.escape(chr(start)) if start == prev else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
        if c is not None:
            start = prev = c
    return "[" + "".join(parts) + "]"


# ------------------------------------------------------------------------------------ HTML / XML
_KNOWN_TAGS = (
    "a|abbr|abstract|b|big|blockquote|body|br|center|chemistry|claim|claim-ref|claim-text|claims|code|col|"
    "dd|description|div|dl|doc-number|dt|em|figref|font|h[1-6]|head|heading|hr|html|i|img|invention-title|"
    "li|maths?|meta|ol|p|para|paragraph|pre|s|small|span|strong|sub|sup|table|tables|tbody|td|th|thead|"
    "title|tr|tt|u|ul|us-patent-grant|us-patent-application"
)
_BLOCK_TAG = re.compile(r"<(?:br|/p|/div|/li|/tr|/h[1-6]|/claim|/claim-text|/heading|/para|/paragraph)\b[^<>]*>",
                        re.I)
_TAG = re.compile(
    r"<!--.*?-->|<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<(script|style)\b.*?</\1\s*>"
    rf"|</?(?:{_KNOWN_TAGS})(?:\s[^<>]{{0,500}})?/?>"
    r"|</[A-Za-z][\w:.-]*\s*>"
    r"|<[A-Za-z][\w:.-]*(?:\s+[\w:.-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))+\s*/?>",
    re.I | re.S)
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def strip_html(text: str) -> str:
    """Remove markup (known HTML and patent-XML tags, any closing tag, tags with attributes,
    comments, scripts) and decode entities; ``a < b > c`` in technical text is left alone."""
    if "<" in text:
        text = _BLOCK_TAG.sub("\n", text)
        text = _TAG.sub("", text)
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    return text


# ------------------------------------------------------------------------------ USPTO markup
_GREEK = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma "
          "tau upsilon phi chi psi omega").split()
_NAMED = {name: chr(0x3B1 + i + (1 if i >= 17 else 0)) for i, name in enumerate(_GREEK)}
_NAMED.update({name.upper(): chr(0x391 + i + (1 if i >= 17 else 0)) for i, name in enumerate(_GREEK)})
_NAMED.update({"degree": "°", "times": "×", "+-": "±", "-+": "∓", "ltoreq": "≤", "gtoreq": "≥", "noteq": "≠",
               "about": "~", "apprxeq": "≈", "infin": "∞", "multidot": "·", "div": "÷", "perp": "⊥",
               "angle": "∠", "sqroot": "√", "dbd": "⇌", "fwdarw": "→", "rarw": "←", "uparw": "↑",
               "dwnarw": "↓", "quadrature": "□", "circle-solid": "●", "cndot": "·", "ident": "≡",
               "varies": "∝", "intg": "∫", "SIGMA.": "Σ"})
_USPTO_NAMED = re.compile(r"\.(" + "|".join(re.escape(k) for k in sorted(_NAMED, key=len, reverse=True)) + r")\.")
_USPTO_EQ = re.compile(r"##(?:EQU|STR|TBL|CHEM|MATH)[A-Z]*\d*##")
_SUB_DIGITS = str.maketrans("0123456789+-()", "₀₁₂₃₄₅₆₇₈₉₊₋₍₎")
_SUP_DIGITS = str.maketrans("0123456789+-()", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁽⁾")
_USPTO_SUBSUP = re.compile(r"\.(sub|sup|sbsb|spsp)\.([0-9+\-()]+(?![A-Za-z])|[A-Za-z0-9]+)")


def _subsup(m: re.Match) -> str:
    kind, body = m.group(1), m.group(2)
    sub = kind in ("sub", "sbsb")
    if re.fullmatch(r"[0-9+\-()]+", body):
        return body.translate(_SUB_DIGITS if sub else _SUP_DIGITS)
    return ("_" if sub else "^") + body


def uspto_markup(text: str) -> str:
    """USPTO full-text ("Greenbook") markup to Unicode: ``N.sub.2`` -> ``N₂``, ``m.sup.2`` -> ``m²``,
    ``W.sub.i`` -> ``W_i``, ``.alpha.`` -> ``α``, ``.degree.`` -> ``°``; ``##EQU1##`` placeholders go."""
    if "." not in text and "##" not in text:
        return text
    if "##" in text:
        text = _USPTO_EQ.sub("", text)
    if ".su" in text or ".sb" in text or ".sp" in text:
        text = _USPTO_SUBSUP.sub(_subsup, text)
    return _USPTO_NAMED.sub(lambda m: _NAMED[m.group(1)], text)


# ------------------------------------------------------------------------------------ CSV quotes
_QUOTED_LINE = re.compile(r'^(\s*(?:<\|\w+\|>)?)"(.*)"\s*$', re.M)


def fix_csv_quotes(text: str) -> str:
    """Undo CSV escaping left in exported text: ``\"\"\"Barometer\"\" neuron\"`` -> ``\"Barometer\" neuron``."""
    if '""' not in text:
        return text
    text = _QUOTED_LINE.sub(lambda m: m.group(1) + m.group(2) if '""' in m.group(2) else m.group(0), text)
    return text.replace('""', '"')


# ------------------------------------------------------------------------------------ OCR / lines
# these run after spaces around line breaks are gone, so they can anchor on the rare "-\n" / "\n"
_HYPHEN_BREAK = re.compile(r"(?<=[A-Za-z]{2})-\n(?=[a-z]{2})")
_EN_BREAK = re.compile(r"(?<=[a-z,])\n(?=[a-z])")
_ZH_BREAK = re.compile(r"(?<=[\u3400-\u9fff，、])\n(?=[\u3400-\u9fff])")
_HAS_HAN = re.compile(r"[\u3400-\u9fff]")
_HAN = re.compile(r"[\u3400-\u9fff]")
_ZH_SPACE = re.compile(r"(?<=[\u3400-\u9fff，。、；：]) +(?=[\u3400-\u9fff，。、；：])")
_SPACE_RUN = re.compile(r"  +")


def dehyphenate(text: str) -> str:
    """``exam-\\nple`` -> ``example`` (a lower-case continuation only: ``Rhine-\\nWestphalia`` stays)."""
    return _HYPHEN_BREAK.sub("", text) if "-\n" in text else text


def join_broken_lines(text: str, zh_min_line_chars: int = 30) -> str:
    """Join hard-wrapped lines inside a sentence. English: a line ending in a lower-case letter or
    comma followed by one starting lower-case. Chinese (no space): a line ending in ``，`` or ``、``,
    or a long line (>= ``zh_min_line_chars``, not the first: that is usually a title) ending in a
    Han character followed by a Han character."""
    if "\n" not in text:
        return text
    text = _EN_BREAK.sub(" ", text)
    if not _HAS_HAN.search(text) or not _ZH_BREAK.search(text):
        return text
    lines = text.split("\n")
    out = [lines[0]]
    for i, line in enumerate(lines[1:], 1):
        prev = out[-1]
        if prev and line and _HAN.match(line[0]) and (
                prev[-1] in "，、" or (i > 1 and _HAN.match(prev[-1]) and len(prev) >= zh_min_line_chars)):
            out[-1] = prev + line
        else:
            out.append(line)
    return "\n".join(out)


def _spaces(text: str) -> str:
    """Single spaces, none at line ends or starts (tabs and odd spaces are already plain spaces)."""
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    if " \n" in text:
        text = text.replace(" \n", "\n")
    if "\n " in text:
        text = text.replace("\n ", "\n")
    return text


def collapse_whitespace(text: str, max_blank_lines: int) -> str:
    """Single spaces, at most ``max_blank_lines`` blank lines, no spaces between Han characters."""
    text = _spaces(text)
    if " " in text and _HAS_HAN.search(text):
        text = _ZH_SPACE.sub("", text)
    limit = max_blank_lines + 1
    if "\n" * (limit + 1) in text:
        text = re.sub(r"\n{%d,}" % (limit + 1), "\n" * limit, text)
    return text.strip()


# ---------------------------------------------------------------------------------------- driver
class Cleaner:
    """All enabled cleaning operations, in a fixed order, as one callable."""

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.table = _table(cfg)
        # a character-class scan is much faster than str.translate when (as usual) nothing matches
        self.special = re.compile(_char_class(ord(c) for c in self.table))

    def __call__(self, text: str) -> str:
        cfg = self.cfg
        if cfg.normalization == "nfc":
            if not unicodedata.is_normalized("NFC", text):
                text = unicodedata.normalize("NFC", text)
        elif cfg.normalization == "nfkc":
            text = unicodedata.normalize("NFKC", text)
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        if self.special.search(text):
            table = self.table
            text = self.special.sub(lambda m: table[m.group()], text)
        if cfg.strip_html:
            text = strip_html(text)
        if cfg.fix_csv_quotes:
            text = fix_csv_quotes(text)
        if cfg.uspto_markup:
            text = uspto_markup(text)
        if cfg.collapse_whitespace:
            text = _spaces(text)
        if cfg.ocr_dehyphenate:
            text = dehyphenate(text)
        if cfg.join_broken_lines:
            text = join_broken_lines(text)
        if cfg.collapse_whitespace:
            text = collapse_whitespace(text, cfg.max_blank_lines)
        else:
            text = text.strip()
        return text


META_TEXT_FIELDS = ("title", "abstract", "description")


def clean_doc(doc: dict, cleaner: Cleaner) -> dict:
    """Clean a document's text and its structured text fields (in place); returns it."""
    doc["text"] = cleaner(doc["text"])
    meta = doc.get("meta", {})
    for name in META_TEXT_FIELDS:
        if isinstance(meta.get(name), str):
            value = cleaner(meta[name])
            if value:
                meta[name] = value
            else:
                del meta[name]
    if isinstance(meta.get("claims"), list):
        claims = [c for c in (cleaner(c) for c in meta["claims"] if isinstance(c, str)) if c]
        if claims:
            meta["claims"] = claims
        else:
            del meta["claims"]
    return doc
