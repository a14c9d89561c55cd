"""Quality filters. Each is configurable, each removal is counted under the filter's name.

Filters run in a fixed order and the first that fails names the reason, so one document has one
reason and the counts add up. Word-based tests (mean word length, garbled OCR) apply to
Latin-script text (en/other); n-gram repetition counts words in Latin text and characters in
Chinese. Defaults were tuned on the real patent text in ``../shared/data``: modern US and Chinese
patents pass (titles aside, see ``length``), and the 19th-century OCR keeps its readable
specifications, noisy drawing-page headers and all, while run-together, character-swapped and
drawing-only pages go.

``garbled_ocr`` looks at tokens, not characters: a word-like token is a run of letters with
ordinary capitalization (``word``, ``Word``, ``WORD``, hyphenated parts allowed) and a vowel; an
*anomaly* is a token with a lower-case letter before a capital inside it (``leSS``, ``doWnWard``),
letters mixed with digits in OCR confusions (``S0``, ``In01e``, ``l891``) or a run-together
string of 20+ letters (``ofthedescendingairtubes``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from patentgpt.data.pipeline.config import FiltersConfig
from patentgpt.data.lang import EN_FUNCTION_WORDS

FILTER_ORDER = ("eval_exclusion", "length", "boilerplate", "garbled_ocr", "symbol_ratio", "digit_ratio", "repeated_lines",
                "repeated_ngrams", "mean_word_length")

_MARKER = re.compile(r"<\|\w+\|>")
_ASCII_DIGIT = re.compile(r"[0-9]")
_DIGIT = re.compile(r"[\d₀-₉⁰¹²³⁴-⁹]")
# letters, digits, whitespace and ordinary prose punctuation (ASCII and CJK) are not "symbols"
_SYMBOL = re.compile(r"[^\w\s.,;:!?'\"()\[\]\-/，。、；：！？（）《》“”‘’「」【】…·—]")
_STRIP = "(\"'[{<)]}>.,;:!?*′″’‘“”°µμ"
_PLURAL = re.compile(r"\((?:s|es)\)")  # system(s)
_UNITS = frozenset("wt mm cm km kg mg ml nm ppm rpm psi kw kwh hz khz mhz ghz mpa kpa gpa pa ms ns db lb lbs ft "
                   "sq st nd rd th vs cf ph".split())
_CHEM = re.compile(r"^(?:[A-Z][a-z]?[0-9₀-₉]*){2,}$")  # CuO, ZrO2, H2O, NiFe (element symbols and counts)
_WORDLIKE = re.compile(r"^(?:(?:[A-Z]?[a-z]+|[A-Z]+|[α-ωΑ-Ω])(?:[-'/](?:[A-Za-z]+|[α-ωΑ-Ω]))*|(?:[A-Za-z]\.)+[A-Za-z]?)$")
_MATH = re.compile(r"[_^=+<>#·]")
_ACRONYM = re.compile(r"^[A-Z]{2,5}s?$")
_HAS_LETTER = re.compile(r"[A-Za-z]")
_LOWER3 = re.compile(r"[a-z]{3}")
_UNIT = re.compile(r"^(?:[a-z]+[A-Z]|[A-Za-z][A-Z]*[a-z]*[A-Z])[A-Za-z]*$")  # pH, CuO, MPa, kWh, NiFe (<= 4 letters)
_VOWEL = re.compile(r"[aeiouyAEIOUY]")
_CASE_SWAP = re.compile(r"[a-z][A-Z]")
_OCR_DIGIT = re.compile(r"[A-Za-z][?|()\[\]{}<>%@#*\\][A-Za-z]|[a-z][0-9]+[a-z]|^[A-Z]?[a-z]{2,}[0-9]+$|^[lIO][0-9]{2,}$")
_LONG_RUN = re.compile(r"[A-Za-z]{20,}")
_ALPHA_CORE = re.compile(r"[A-Za-z]+")


@dataclass
class Decision:
    keep: bool
    reason: str | None = None
    detail: dict | None = None
    text: str | None = None  # the document text after filters that edit (boilerplate)


def _body(text: str) -> str:
    return _MARKER.sub(" ", text) if "<|" in text else text


# --------------------------------------------------------------------------------------- metrics
def nonspace_count(text: str) -> int:
    return len(text) - sum(text.count(ws) for ws in (" ", "\n", "\t"))


def symbol_ratio(text: str) -> float:
    body = _body(text)
    n = nonspace_count(body)
    if not n:
        return 0.0
    return len(_SYMBOL.findall(body)) / n


def digit_ratio(text: str) -> float:
    n = nonspace_count(text)
    return len(_ASCII_DIGIT.findall(text)) / n if n else 0.0


def repeated_lines(text: str, min_line_chars: int) -> tuple[float, float, int]:
    """(share of lines repeating an earlier line, share of characters in them, lines considered)."""
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if len(ln) >= min_line_chars]
    if not lines:
        return 0.0, 0.0, 0
    seen: set = set()
    dup_lines = dup_chars = 0
    for ln in lines:
        if ln in seen:
            dup_lines += 1
            dup_chars += len(ln)
        else:
            seen.add(ln)
    total = sum(len(ln) for ln in lines)
    return dup_lines / len(lines), dup_chars / total, len(lines)


def ngram_tokens(text: str, lang: str) -> list[str]:
    body = _body(text)
    if lang == "zh":
        return [c for c in body if not c.isspace()]
    return body.lower().split()


def dup_ngram_fraction(tokens: list[str], n: int) -> float:
    """Share of tokens covered by an n-gram that already occurred earlier in the document."""
    if len(tokens) < n + 1:
        return 0.0
    # Python's string hash is salted per process, which is fine: only equality inside one document matters
    ids = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
    ids = ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
    h = np.zeros(len(tokens) - n + 1, dtype=np.uint64)
    mult = np.uint64(0x100000001B3)
    for k in range(n):  # polynomial hash of every window
        h = h * mult + ids[k: k + len(h)]
    _, first = np.unique(h, return_index=True)
    dup = np.ones(len(h), dtype=bool)
    dup[first] = False
    if not dup.any():
        return 0.0
    cover = np.zeros(len(tokens) + 1, dtype=np.int64)
    starts = np.nonzero(dup)[0]
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    return float((np.cumsum(cover[:-1]) > 0).mean())


_TOKEN_CACHE: dict[str, tuple] = {}


def _classify(t: str) -> tuple:
    """(anomaly, counted, function word, word-like, alphabetic parts, their letters) of one token."""
    core = _PLURAL.sub("", t).strip(_STRIP)
    parts = _ALPHA_CORE.findall(t)
    n_parts, n_letters = len(parts), sum(map(len, parts))
    if core.lower() in _UNITS or _CHEM.match(core):  # units and formulas: neither words nor noise
        return False, False, False, False, n_parts, n_letters
    anomaly = bool(_CASE_SWAP.search(core) or _OCR_DIGIT.search(core) or _LONG_RUN.search(core))
    if _MATH.search(t) or (_DIGIT.search(core) and not _LOWER3.search(core)) or (len(core) <= 4 and _UNIT.match(core)):
        return anomaly, False, False, False, n_parts, n_letters
    wordlike = bool(_WORDLIKE.match(core) and max(map(len, core.split("-"))) < 20 and (
        len(core) <= 1 or _VOWEL.search(core) or _ACRONYM.match(core)))
    return anomaly, True, core.lower() in EN_FUNCTION_WORDS, wordlike, n_parts, n_letters


def word_stats(text: str) -> dict:
    """Statistics of Latin-script text used by mean_word_length and garbled_ocr.

    Anomalies are counted over every token with a letter. The word-like share is taken over
    the tokens that should be words: codes, formulas and reference signs (a digit and no run of
    three lower-case letters: CO2, H2O, G06F, 14a), units and chemical symbols (pH, MPa, CuO) and
    math (W_i, x^2, a=b) are neutral. Tokens are counted first (C speed) and each distinct token
    is classified once (and cached across documents)."""
    n = anomalies = counted = function = wordlike = alpha_n = alpha_len = 0
    cache = _TOKEN_CACHE
    if len(cache) > 1_000_000:
        cache.clear()
    for tok, c in Counter(_body(text).split()).items():
        info = cache.get(tok)
        if info is None:
            info = cache[tok] = _classify(tok) if _HAS_LETTER.search(tok) else None
        if info is None:
            continue
        n += c
        a, cnt, fn, wl, parts, letters = info
        anomalies += c * a
        alpha_n += c * parts
        alpha_len += c * letters
        if cnt:
            counted += c
            function += c * fn
            wordlike += c * wl
    if not n:
        return {"words": 0, "wordlike": 0.0, "anomaly": 0.0, "function": 0.0, "mean_len": 0.0}
    return {"words": n, "wordlike": wordlike / max(counted, 1), "anomaly": anomalies / n,
            "function": function / max(counted, 1), "mean_len": alpha_len / alpha_n if alpha_n else 0.0}


# --------------------------------------------------------------------------------------- filters
class DocFilter:
    """All enabled filters of one (possibly source-specific) configuration."""

    def __init__(self, cfg: FiltersConfig):
        self.cfg = cfg
        bp = cfg.boilerplate
        self.phrases = list(bp.phrases)
        self.patterns = [re.compile(p, re.M) for p in bp.patterns]
        self.eval_items = None
        if cfg.eval_exclusion.tasks:
            from patentgpt.eval.decontam import eval_exclusion_matcher

            self.eval_items = eval_exclusion_matcher(cfg.eval_exclusion.tasks, cfg.eval_exclusion.ngram)

    def _boilerplate(self, text: str) -> bool:
        low = text.lower()
        return any(p in low for p in self.phrases) or any(p.search(text) for p in self.patterns)

    def __call__(self, text: str, lang: str) -> Decision:
        c = self.cfg
        if self.eval_items is not None and (hit := self.eval_items.scan(text)):
            return Decision(False, "eval_contamination", {"items": sorted(hit)[:5]})
        n_chars = nonspace_count(text)
        if c.length.enabled:
            if n_chars < c.length.min_chars:
                return Decision(False, "too_short", {"chars": n_chars})
            if c.length.max_chars is not None and n_chars > c.length.max_chars:
                return Decision(False, "too_long", {"chars": n_chars})
        if c.boilerplate.enabled and self._boilerplate(text):
            kept, cut = [], 0
            for line in text.split("\n"):
                if self._boilerplate(line):
                    cut += len(line)
                else:
                    kept.append(line)
            if cut / max(len(text), 1) > c.boilerplate.max_removed_frac or not "".join(kept).strip():
                return Decision(False, "boilerplate", {"cut_frac": round(cut / max(len(text), 1), 3)})
            text = "\n".join(kept).strip()
            n_chars = nonspace_count(text)
            if c.length.enabled and n_chars < c.length.min_chars:
                return Decision(False, "too_short", {"chars": n_chars, "after": "boilerplate"})
        latin = lang != "zh"
        ws = word_stats(text) if latin and (c.garbled_ocr.enabled or c.mean_word_length.enabled) else None
        if c.garbled_ocr.enabled:
            g = c.garbled_ocr
            repl = text.count("\ufffd") / max(n_chars, 1)
            if repl > g.max_replacement_frac:
                return Decision(False, "garbled_ocr", {"replacement_frac": round(repl, 4)})
            if ws is not None and ws["words"] >= g.min_words:
                score = (1.0 - ws["wordlike"]) + ws["anomaly"]
                if ws["wordlike"] < g.min_wordlike_frac or ws["anomaly"] > g.max_anomaly_frac or (
                        score > g.max_garble_score) or (lang == "en" and ws["function"] < g.min_function_word_frac):
                    return Decision(False, "garbled_ocr", {"wordlike": round(ws["wordlike"], 3),
                                                           "anomaly": round(ws["anomaly"], 3),
                                                           "function": round(ws["function"], 3)})
        if c.symbol_ratio.enabled:
            r = symbol_ratio(text)
            if r > c.symbol_ratio.max_ratio:
                return Decision(False, "symbol_ratio", {"ratio": round(r, 3)})
        if c.digit_ratio.enabled:
            r = digit_ratio(text)
            if r > c.digit_ratio.max_ratio:
                return Decision(False, "digit_ratio", {"ratio": round(r, 3)})
        if c.repeated_lines.enabled:
            rl = c.repeated_lines
            frac, char_frac, n_lines = repeated_lines(text, rl.min_line_chars)
            if n_lines >= rl.min_lines and (frac > rl.max_dup_line_frac or char_frac > rl.max_dup_line_char_frac):
                return Decision(False, "repeated_lines", {"dup_line_frac": round(frac, 3),
                                                          "dup_char_frac": round(char_frac, 3)})
        if c.repeated_ngrams.enabled:
            rn = c.repeated_ngrams
            toks = ngram_tokens(text, lang)
            if len(toks) >= rn.min_tokens:
                frac = dup_ngram_fraction(toks, rn.n * 2 if lang == "zh" else rn.n)
                if frac > rn.max_dup_frac:
                    return Decision(False, "repeated_ngrams", {"dup_frac": round(frac, 3)})
        if c.mean_word_length.enabled and ws is not None and ws["words"] >= c.mean_word_length.min_words:
            m = ws["mean_len"]
            if not c.mean_word_length.min_len <= m <= c.mean_word_length.max_len:
                return Decision(False, "mean_word_length", {"mean": round(m, 2)})
        return Decision(True, text=text)
