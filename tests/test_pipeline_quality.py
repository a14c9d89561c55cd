"""Cleaning, language tagging and quality filters, including hand-labelled 19th-century OCR."""

from __future__ import annotations

import json

import pytest

from patentgpt.data.pipeline.clean import Cleaner, clean_doc, fix_csv_quotes, strip_html, uspto_markup
from patentgpt.data.pipeline.config import CleanConfig, FiltersConfig, LangConfig
from patentgpt.data.pipeline.filters import DocFilter, dup_ngram_fraction, word_stats
from patentgpt.data.lang import detect

clean = Cleaner(CleanConfig())

PROSE = ("The valve body is made of cast iron and the seat is pressed into the bore so that the disc rests "
         "on it when the spindle is turned down. A spring holds the disc against the seat and the handle "
         "is fixed to the upper end of the spindle by a nut. ")


# ----------------------------------------------------------------------------------------- clean
def test_nfc_keeps_chinese_punctuation_and_superscripts_but_folds_fullwidth_alnum():
    text = "一种装置，包括：壳体（10）；面积为５０ｍｍ²，电流为10⁻³Ａ。ﬁlter"
    out = clean(text)
    assert "，" in out and "：" in out and "（10）" in out and "；" in out  # full-width punctuation stays
    assert "50mm²" in out and "10⁻³A" in out  # alnum folded, super/subscripts kept
    assert out.endswith("filter")  # ligature folded
    nfkc = Cleaner(CleanConfig(normalization="nfkc"))(text)
    assert "," in nfkc and "mm2" in nfkc  # what NFKC would have done
    assert clean("e\u0301t\u00e9") == "\u00e9t\u00e9"  # NFC composes


def test_control_chars_whitespace_and_page_breaks():
    assert clean("a\x00b\u200bc\u00add\x07 e\u3000f\tg") == "abcd e f g"
    assert clean("page one\x0c\x0cpage two") == "page one\n\npage two"
    assert clean("  many    spaces \n\n\n\n\nnext  ") == "many spaces\n\nnext"
    assert clean("一种 压力 传感器") == "一种压力传感器"  # spaces between Han characters go


def test_html_and_xml_remnants():
    assert strip_html("<p>The <b>valve</b> opens.</p><br/>Next &amp; last &lt;x&gt;") == \
        "The valve opens.\n\nNext & last <x>"
    assert strip_html('<claim-text num="1">A widget</claim-text>') == "A widget\n"
    assert strip_html("<!-- note --><?xml version='1.0'?>text") == "text"
    keep = "if a < b > c then x<y; <|title|>Title"
    assert strip_html(keep) == keep  # comparisons and section markers are not tags


def test_csv_quotes_and_uspto_markup():
    assert fix_csv_quotes('"""Barometer"" neuron for a neural network"') == '"Barometer" neuron for a neural network'
    assert fix_csv_quotes('<|title|>"A ""quoted"" word"') == '<|title|>A "quoted" word'
    assert uspto_markup("N.sub.2 at 25.degree. C. gives m.sup.2, W.sub.i and .alpha.-Fe ##EQU1## done") == \
        "N₂ at 25° C. gives m², W_i and α-Fe  done"


def test_ocr_hyphenation_and_broken_lines():
    assert clean("the con-\nstruction of the\nvalve is simple.\nThe Rhine-\nWestphalia line") == \
        "the construction of the valve is simple.\nThe Rhine-\nWestphalia line"
    wrapped = "中华人民共和国专利法\n" + "本发明涉及一种用于电动汽车动力电池包的热管理系统及其控制方法，" + "\n包括液冷板"
    out = clean(wrapped)
    assert out.startswith("中华人民共和国专利法\n")  # a title line is not joined to the text
    assert "控制方法，包括液冷板" in out
    long_line = "本发明涉及一种用于电动汽车动力电池包的热管理系统及其控制方法以及装置"
    assert clean("标题\n" + long_line + "\n" + "该系统包括液冷板") == "标题\n" + long_line + "该系统包括液冷板"


def test_clean_doc_cleans_meta_fields_too():
    doc = {"text": "<p>A&amp;B</p>", "meta": {"title": " <b>T</b> ", "claims": ["1. x\u200b", "\x00"]}}
    clean_doc(doc, clean)
    assert doc == {"text": "A&B", "meta": {"title": "T", "claims": ["1. x"]}}


# ------------------------------------------------------------------------------------- language
@pytest.mark.parametrize("text,lang", [
    ("一种基于自然语言处理的银行客服会话问答处理方法及系统，包括获取权限数据。", "zh"),
    ("Title: 一种银行客服问答系统\nKeywords: data; word; question\nAbstract: 本发明涉及人工智能技术领域，尤其涉及问答处理方法。", "zh"),
    (PROSE, "en"),
    ("Battery management system with adaptive cell balancing", "en"),  # short Latin text: en
    ("Die Erfindung betrifft eine Vorrichtung zum Trocknen von Wäsche mit einer Trommel, die von einem "
     "Motor angetrieben wird, wobei die Trommel eine Vielzahl von Öffnungen aufweist und der Luftstrom "
     "durch ein Gebläse erzeugt wird, das unterhalb der Trommel angeordnet ist und mit dem Motor verbunden "
     "ist, sodass die Wäsche schneller trocknet und weniger Energie verbraucht wird.", "other"),
    ("本発明は、リチウムイオン電池の正極材料に関するものであり、サイクル特性を改善する。", "other"),
    ("본 발명은 리튬 이온 배터리의 양극 재료에 관한 것이다.", "other"),
    ("Изобретение относится к области электротехники и может быть использовано в аккумуляторах.", "other"),
    ("12 34 56 -- ==", "other"),
])
def test_language_detection(text, lang):
    assert detect(text, LangConfig())[0] == lang


# -------------------------------------------------------------------------------------- filters
def decide(text: str, lang: str = "en", **over):
    cfg = FiltersConfig.model_validate(over) if over else FiltersConfig()
    return DocFilter(cfg)(text, lang)


def test_each_filter_names_its_reason():
    good = PROSE * 3
    assert decide(good).keep
    assert decide("A short note.").reason == "too_short"
    assert decide(good, length={"max_chars": 100}).reason == "too_long"
    assert decide("Click here to accept cookies. Cookie policy. All rights reserved.\n" * 3 + "Ok.",
                  length={"min_chars": 5}).reason == "boilerplate"
    cut = decide(good + "\nCopyright 2024 Example. All rights reserved.")
    assert cut.keep and "reserved" not in cut.text  # a boilerplate line is cut, the document stays
    assert decide(good + " #$%&*@~^|=+<>{}" * 40).reason == "symbol_ratio"
    assert decide(good + " 1234567890 987654321" * 60).reason == "digit_ratio"
    lines = "\n".join(["This line is repeated again and again in the page."] * 8 + [PROSE])
    assert decide(lines).reason == "repeated_lines"
    ngram = PROSE + ("the valve body is made of cast iron and the seat is pressed " * 30)
    assert decide(ngram).reason == "repeated_ngrams"
    long_words = " ".join(["electroencephalographically counterrevolutionaries"] * 5 + ["the valve"] * 3) * 4
    assert decide(long_words, repeated_ngrams={"enabled": False}, garbled_ocr={"enabled": False}).reason == \
        "mean_word_length"
    assert decide(PROSE.replace("e", "\ufffd") * 2).reason == "garbled_ocr"


def test_filters_apply_by_language():
    zh = "本发明公开了一种动力电池热管理方法，包括在电池包内划分多个温度区域，并根据区域温差控制液冷板的流量。" * 3
    assert decide(zh, "zh").keep  # word-based tests do not apply to Chinese
    assert decide(zh * 12, "zh").reason == "repeated_ngrams"  # character n-grams do


def test_word_stats_neutral_tokens():
    text = "The catalyst (12a) contains CuO, ZnO and ZrO2 at pH 7 and 5 MPa, giving H2O and CO2 with W_i = x^2."
    ws = word_stats(text)
    assert ws["wordlike"] == 1.0 and ws["anomaly"] == 0.0
    assert word_stats("the piston doWnWard leSS toim10alt ofthedescendingairtubes S0")["anomaly"] > 0.5


def test_dup_ngram_fraction():
    assert dup_ngram_fraction(list("abcdefghij"), 3) == 0.0
    assert dup_ngram_fraction(["a", "b", "c"] * 4, 3) == pytest.approx(0.75)


# ------------------------------------------------------------------ historical OCR, hand-labelled
# Read by eye in ../shared/data/patents/en/historical_us_ocr.jsonl (1877-1898 OCR).
OCR_KEEP = {
    "US198080": "readable specification after a noisy drawing-page header",
    "US413519": "case swaps (doWnWard, thuS) but every sentence readable",
    "US487003": "readable with letter-case noise (tOuch, unleSS)",
    "US467672": "short, readable claims after a drawing page of noise",
    "US244745": "readable; curly quotes became U+FFFD",
}
OCR_DROP = {
    "US446249": "words run together, digits for letters (fr0m, 9fthe, Mode1)",
    "US534399": "words run together (bygravity,andreachesthelowermostendof)",
    "US355896": "character soup (toim10alt In01e or leSS)",
    "US278540": "two columns interleaved, run-together and misread words",
    "US339662": "drawing-page headers only, no specification",
    "US508229": "empty (form feeds only)",
}


@pytest.mark.shared_data
def test_historical_ocr_hand_labelled(shared_data):
    path = shared_data / "patents" / "en" / "historical_us_ocr.jsonl"
    rows = {r["patent_number"]: r for r in map(json.loads, open(path, encoding="utf-8"))}
    flt = DocFilter(FiltersConfig())
    lcfg = LangConfig()
    for pn, why in {**OCR_KEEP, **OCR_DROP}.items():
        text = clean(rows[pn]["text"])
        lang = detect(text, lcfg)[0] if text else "other"
        decision = flt(text, lang)
        keep = bool(text) and lang in lcfg.keep and decision.keep
        assert keep == (pn in OCR_KEEP), f"{pn} ({why}): lang {lang}, {decision.reason} {decision.detail}"
    # and over the whole file: the readable majority stays
    kept = sum(1 for r in rows.values() if (t := clean(r["text"])) and flt(t, detect(t, lcfg)[0]).keep)
    assert kept >= 0.98 * len(rows)


@pytest.mark.shared_data
def test_modern_patents_pass_the_filters(shared_data):
    flt = DocFilter(FiltersConfig())
    rows = [json.loads(line) for line in open(shared_data / "patents" / "en" / "tfh_annotated_abstracts.jsonl")]
    texts = [clean(r["abstract"]) for r in rows[:400]]
    assert all(flt(t, "en").keep for t in texts)
