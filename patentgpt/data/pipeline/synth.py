"""Synthesize bilingual (English / Chinese) SFT instruction data from structured patents.

PatentGPT's SFT stage mixes general instructions with IP instructions. The cheapest grounded
IP instructions come from the structure patents already have: a title belongs to an abstract,
an abstract summarizes the claims, IPC codes classify the document, claims cite each other.
Every answer produced here is *extracted* from the record (never invented), so the data is as
correct as the source: the title task answers with the record's title, the claim-structure
task with dependencies parsed from the claim text, the summary with the abstract's first
sentence plus the preamble of the first independent claim.

Output records are chat records that TRL's ``SFTTrainer`` and ``tokenizer.apply_chat_template``
(ChatML ``<|im_start|>role ... <|im_end|>``) consume directly::

    {"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}],
     "task": "claim_type", "lang": "en", "source_id": "US123"}

Input records follow the pipeline's document contract ``{"id", "source", "loc", "lang", "text",
"meta": {"title", "abstract", "claims", "description", "ipc", "cpc", "date", ...}}``. A record
lacking what a task needs is skipped *for that task* and counted in :class:`SynthStats` by task
and reason, so for every record task ``produced + skipped == records``. Prompt wording comes
from several paraphrased templates per task and language, chosen by a hash of (seed, task, id):
the same input and seed always give byte-identical output.

Skip reasons: ``missing:<field>`` / ``bad_type:<field>`` (absent, empty or wrongly typed),
``claims_unnumbered`` (no numbered claim found), ``claims_too_long`` (claim 1 alone exceeds
MAX_CLAIMS_CHARS), ``no_valid_codes:ipc``, ``unsupported_lang`` (``other``), ``not_a_patent``
(``meta.kind == "text"``), ``rewritten_copy`` (an LLM rewrite whose original is also in the
stream: same structured fields, so the examples would be duplicates), ``max_per_task``; for
question sets also ``missing:question``, ``answer_not_a_candidate``, ``malformed_line``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import Field, field_validator

from patentgpt.config import ConfigError, Section
from patentgpt.data.jsonl import iter_jsonl, read_json_records
from patentgpt.data.lang import detect_lang

TASKS: tuple[str, ...] = (
    "title_from_abstract",
    "abstract_from_claims",
    "ipc_classification",
    "claim_type",
    "summarize",
    "qa",
)
RECORD_TASKS: tuple[str, ...] = TASKS[:-1]
LANGS = ("en", "zh")

# Prompts never carry more claim text than this; claims are cut at whole-claim boundaries so
# every answer stays grounded in what the prompt shows.
MAX_CLAIMS_CHARS = 8000


# ----------------------------------------------------------------------------- configuration


class SynthConfig(Section):
    """The ``synth`` step of a data config: which tasks, which seed, where the JSONL goes."""

    enabled: bool = False
    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    seed: int = 0
    output_name: str = "sft_synth.jsonl"
    qa_files: list[str] = Field(default_factory=list)
    max_per_task: int | None = Field(default=None, ge=1)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        for name in tasks:
            if name not in TASKS:
                raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
        duplicates = sorted({name for name in tasks if tasks.count(name) > 1})
        if duplicates:
            raise ValueError(f"task {duplicates[0]!r} listed more than once")
        return tasks

    @field_validator("output_name")
    @classmethod
    def _plain_file_name(cls, name: str) -> str:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"must be a plain file name, got {name!r}")
        return name


# ----------------------------------------------------------------------------- statistics


@dataclass
class SynthStats:
    """What synthesis produced and skipped, by task and reason (filled while iterating)."""

    records: int = 0
    qa_items: int = 0
    produced: Counter = field(default_factory=Counter)
    skipped: dict = field(default_factory=lambda: defaultdict(Counter))

    def skip(self, task: str, reason: str) -> None:
        self.skipped[task][reason] += 1

    def as_dict(self) -> dict:
        """Plain, sorted dict for ``report.json``."""
        return {
            "records": self.records,
            "qa_items": self.qa_items,
            "produced": {t: self.produced[t] for t in sorted(self.produced)},
            "total_produced": sum(self.produced.values()),
            "skipped": {t: dict(sorted(c.items())) for t, c in sorted(self.skipped.items()) if c},
        }


class _Skip(Exception):
    """Raised by a task builder when a record lacks what the task needs; carries the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- text helpers

_CHAT_TOKENS = re.compile(r"<\|im_(?:start|end)\|>|<\|endoftext\|>")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u3000]+")


def clean_text(value: str) -> str:
    """Collapse runs of spaces, trim lines, drop chat control tokens (a patent that happens to
    contain ``<|im_end|>`` must not be able to close a chat turn)."""
    value = _CHAT_TOKENS.sub("", value)
    lines = (_SPACES.sub(" ", line).strip() for line in value.splitlines())
    return "\n".join(line for line in lines if line)


def _choice(seed: int, task: str, source_id: str, n: int) -> int:
    """Deterministic index in [0, n) from (seed, task, id); Python's hash() is salted per run."""
    digest = hashlib.sha256(f"{seed}\x1f{task}\x1f{source_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def _text_field(meta: dict, name: str) -> str:
    """A non-empty cleaned string field, or a _Skip naming why not."""
    value = meta.get(name)
    if value is None:
        raise _Skip(f"missing:{name}")
    if not isinstance(value, str):
        raise _Skip(f"bad_type:{name}")
    value = clean_text(value)
    if not value:
        raise _Skip(f"missing:{name}")
    return value


_ABBREVIATIONS = {
    "e.g", "i.e", "etc", "u.s", "no", "nos", "fig", "figs", "approx", "vs", "cf", "al", "inc", "ltd",
    "co", "corp", "dr", "mr", "ms", "st", "ser", "pat", "appl", "ref", "eq", "ca", "resp", "viz",
}
_EN_BOUNDARY = re.compile(r"[.!?][\"”’)\]]*\s+(?=[A-Z0-9\"“(\[])")
_ZH_BOUNDARY = re.compile(r"[。！？]")


def first_sentence(text: str, lang: str) -> str:
    """The first sentence of ``text``: up to the first 。！？ in Chinese; in English up to a
    sentence-final mark followed by a capital, not after common abbreviations (e.g., Fig., No.)."""
    text = " ".join(text.split()) if lang == "en" else "".join(text.split("\n"))
    if lang == "zh":
        match = _ZH_BOUNDARY.search(text)
        return text[: match.end()] if match else text
    for match in _EN_BOUNDARY.finditer(text):
        words = text[: match.start()].split()
        last = words[-1].lower() if words else ""
        if last.rstrip(".") in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last):
            continue
        return text[: match.start() + 1]
    return text


# ----------------------------------------------------------------------------- IPC / CPC

IPC_SECTIONS = {
    "A": ("Human necessities", "人类生活必需"),
    "B": ("Performing operations; transporting", "作业；运输"),
    "C": ("Chemistry; metallurgy", "化学；冶金"),
    "D": ("Textiles; paper", "纺织；造纸"),
    "E": ("Fixed constructions", "固定建筑物"),
    "F": ("Mechanical engineering; lighting; heating; weapons; blasting", "机械工程；照明；加热；武器；爆破"),
    "G": ("Physics", "物理"),
    "H": ("Electricity", "电学"),
    "Y": ("General tagging of new technological developments (CPC only)", "新技术发展的一般标记（仅CPC）"),
}
_CODE = re.compile(r"^([A-HY])(\d{2})([A-Z])(?:\s*0*(\d{1,4})\s*/\s*(\d{1,6}))?$")


def normalize_code(code: str) -> str | None:
    """Canonical IPC/CPC form: subclass, space, main group without leading zeros, slash,
    subgroup (``G06F015/00`` -> ``G06F 15/00``, ``G06F16/3329`` -> ``G06F 16/3329``); a bare
    subclass (``A01M``) stays as is. None for anything that is not such a code."""
    match = _CODE.match(code.strip().upper())
    if not match:
        return None
    section, cls, subclass, group, subgroup = match.groups()
    head = f"{section}{cls}{subclass}"
    return f"{head} {int(group)}/{subgroup}" if group is not None else head


def _codes(meta: dict, name: str) -> list[str]:
    """The valid, normalized, de-duplicated codes of ``meta[name]`` (list, or a string with
    ``;``/``,`` separators), in their original order."""
    raw = meta.get(name)
    if raw is None or raw == [] or raw == "":
        raise _Skip(f"missing:{name}")
    if isinstance(raw, str):
        raw = re.split(r"[;,，；]", raw)
    if not isinstance(raw, (list, tuple)) or not all(isinstance(c, str) for c in raw):
        raise _Skip(f"bad_type:{name}")
    codes = []
    for code in raw:
        norm = normalize_code(code)
        if norm and norm not in codes:
            codes.append(norm)
    if not codes:
        raise _Skip(f"no_valid_codes:{name}")
    return codes


# ----------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """One numbered claim: its text without the number, the earlier claims it refers to."""

    number: int
    text: str
    refs: tuple[int, ...] = ()
    canceled: bool = False

    @property
    def independent(self) -> bool:
        return not self.refs and not self.canceled


_CLAIMS_PREAMBLE = re.compile(
    r"^\s*(?:what\s+is\s+claimed\s+is|the\s+invention\s+claimed\s+is|we\s+claim|i\s+claim|claims|"
    r"权利要求书|权利要求)\s*[:：]?\s*", re.I)
# "1.", "1 .", "1、", "1．", and ranges of canceled claims: "1 - 31 . (canceled)"
# ("1)" is left out on purpose: it numbers claim elements more often than claims.)
_CLAIM_NUMBER = re.compile(r"^\s*(\d{1,3})(?:\s*[-–~至]\s*(\d{1,3}))?\s*[.．、]\s*(?!\d)")
_INLINE_NUMBER = re.compile(r"(?:^|(?<=[.;。；:：]\s)|(?<=[.;。；]))\s*(\d{1,3})\s*[.．、]\s*(?=[A-Z\u4e00-\u9fff(（])")
_CANCELED = re.compile(r"^[(（\[]?\s*(?:canceled|cancelled|deleted|删除)\s*[)）\]]?\s*[.。]?$", re.I)
_EN_REF = re.compile(r"\bclaims?\s+(\d+(?:\s*(?:,|or|and|to|through|-|–)\s*(?:claims?\s+)?\d+)*)", re.I)
_ZH_REF = re.compile(r"权利要求\s*(\d+(?:\s*(?:、|,|，|或|和|及|至|到|-|–|—|~|～)\s*(?:权利要求)?\s*\d+)*)")
_RANGE_WORD = re.compile(r"^(?:to|through|-|–|—|~|～|至|到)$", re.I)


def _numbers_in(expression: str) -> list[int]:
    """Expand "1, 2 or 5", "1 to 3", "1-3", "1至3" into claim numbers."""
    tokens = re.findall(r"\d+|to|through|[-–—~～至到]", expression, re.I)
    numbers: list[int] = []
    pending_range = False
    for tok in tokens:
        if _RANGE_WORD.match(tok):
            pending_range = bool(numbers)
            continue
        n = int(tok)
        if pending_range and numbers and numbers[-1] < n <= numbers[-1] + 200:
            numbers.extend(range(numbers[-1] + 1, n + 1))
        else:
            numbers.append(n)
        pending_range = False
    return numbers


def claim_refs(text: str, number: int) -> tuple[int, ...]:
    """Earlier claims that claim ``number`` refers to ("of claim 1", "any one of claims 1 to 3",
    "根据权利要求1所述", "权利要求1-3任一项"), in order, without repeats. References to the claim
    itself or to later claims are ignored: a dependent claim can only refer back."""
    refs: list[int] = []
    for pattern in (_EN_REF, _ZH_REF):
        for match in pattern.finditer(text):
            for n in _numbers_in(match.group(1)):
                if 1 <= n < number and n not in refs:
                    refs.append(n)
    return tuple(refs)


def _pieces(claims) -> list[str] | None:
    """Claims as a list of text pieces: a list as given, a string split into lines (and, for a
    single line, at inline claim numbers that follow the expected sequence)."""
    if isinstance(claims, str):
        lines = [ln for ln in claims.splitlines() if ln.strip()]
        if len(lines) > 1:
            return lines
        return _split_inline(claims)
    if isinstance(claims, (list, tuple)) and all(isinstance(c, str) for c in claims):
        return list(claims)
    return None


def _split_inline(text: str) -> list[str]:
    """Split one-line claims text at "N." markers that continue the numbering 1, 2, 3, ...
    A number that does not continue the sequence ("of claim 1. 2. The ...") is not a start."""
    starts, expected = [], None
    for match in _INLINE_NUMBER.finditer(text):
        n = int(match.group(1))
        if expected is None or n == expected:
            starts.append(match.start(1))
            expected = n + 1
    if not starts:
        return [text]
    bounds = starts + [len(text)]
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    head = text[: starts[0]]
    if head.strip() and not _CLAIMS_PREAMBLE.fullmatch(head):
        pieces.insert(0, head)  # unnumbered text before claim 1: parse_claims rejects the list
    return pieces


_CJK_EDGE = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def _join_pieces(left: str, right: str) -> str:
    """Join a claim continuation: with a space in English, directly between Chinese text."""
    left, right = left.rstrip(), right.strip()
    if left and right and (_CJK_EDGE.match(left[-1]) or _CJK_EDGE.match(right[0])):
        return left + right
    return f"{left} {right}"


def parse_claims(claims) -> list[Claim]:
    """Parse a claims field (list of strings, or one string) into numbered :class:`Claim` s.

    A piece that starts with the next claim number ("2.", "2 .", "2、") starts a claim; a piece
    without a number continues the previous claim (real claim lists are often split at ';').
    A leading "What is claimed is:" / "权利要求书" is dropped; "(canceled)" claims and ranges
    ("1 - 31 . (canceled)") are kept as canceled. Returns [] when no numbered claim is found.
    """
    pieces = _pieces(claims)
    if not pieces:
        return []
    parsed: list[list] = []  # [number, text, canceled_range_end]
    for index, piece in enumerate(pieces):
        if index == 0:
            piece = _CLAIMS_PREAMBLE.sub("", piece, count=1)
        match = _CLAIM_NUMBER.match(piece)
        expected = parsed[-1][2] + 1 if parsed else None
        if match and (expected is None or int(match.group(1)) == expected):
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) else first
            parsed.append([first, piece[match.end():], max(first, last)])
        elif parsed:
            parsed[-1][1] = _join_pieces(parsed[-1][1], piece)
        else:
            return []  # text before any numbered claim: not a claim list we understand
    out: list[Claim] = []
    for first, text, last in parsed:
        text = clean_text(text).replace("\n", " ")
        if _CANCELED.match(text) or (last > first and not text):
            out.extend(Claim(n, text, canceled=True) for n in range(first, last + 1))
        elif text:
            out.append(Claim(first, text, claim_refs(text, first)))
    return out


def _claims(meta: dict) -> list[Claim]:
    raw = meta.get("claims")
    if raw is None or raw == [] or raw == "":
        raise _Skip("missing:claims")
    if not isinstance(raw, (str, list, tuple)):
        raise _Skip("bad_type:claims")
    claims = parse_claims(raw)
    if not any(not c.canceled for c in claims):
        raise _Skip("claims_unnumbered")
    return claims


def _budgeted(claims: list[Claim]) -> list[Claim]:
    """The longest prefix of ``claims`` within MAX_CLAIMS_CHARS (whole claims only)."""
    out, used = [], 0
    for claim in claims:
        used += len(claim.text) + 6
        if used > MAX_CLAIMS_CHARS:
            break
        out.append(claim)
    if not any(not c.canceled for c in out):
        raise _Skip("claims_too_long")
    return out


def _render_claims(claims: list[Claim], lang: str) -> str:
    canceled = "(canceled)" if lang == "en" else "（删除）"
    return "\n".join(f"{c.number}. {c.text or canceled}" for c in claims)


def _number_runs(numbers: list[int]) -> str:
    """'1-31' for a consecutive run of three or more, else comma separated."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) >= 3 else ", ".join(map(str, r)) for r in runs)


def _preamble(text: str, lang: str) -> str:
    """What an independent claim claims: its text up to 'comprising', ',' or ':' (or '包括'/'，')."""
    if lang == "zh":
        head = re.split(r"[，,：:；;]|包括|包含|其特征在于", text, maxsplit=1)[0]
    else:
        head = re.split(r"\s*(?:[,:;]|\b(?:comprising|consisting|including|which comprises|characteri[sz]ed|"
                        r"wherein|having)\b)", text, maxsplit=1)[0]
    head = head.strip().rstrip(".。")
    if len(head) > 200:
        head = head[:200].rsplit(" ", 1)[0] if lang == "en" else head[:200]
    return head


# ----------------------------------------------------------------------------- templates

SYSTEM_PROMPTS = {
    "en": "You are PatentGPT, an assistant for patents and intellectual property.",
    "zh": "你是PatentGPT，一个专注于专利与知识产权的助手。",
}

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "title_from_abstract": {
        "en": (
            "Suggest a title for the patent with the following abstract.\n\nAbstract:\n{abstract}",
            "Here is the abstract of a patent:\n\n{abstract}\n\nWhat is the title of this patent?",
            "Write a concise patent title that matches this abstract.\n\n{abstract}",
            "Abstract: {abstract}\n\nGive the title of the patent.",
        ),
        "zh": (
            "请根据以下专利摘要拟定发明名称。\n\n摘要：\n{abstract}",
            "以下是一件专利的摘要：\n\n{abstract}\n\n这件专利的名称是什么？",
            "为具有如下摘要的专利写一个简洁的名称。\n\n{abstract}",
        ),
    },
    "abstract_from_claims": {
        "en": (
            "Write the abstract of a patent whose claims are:\n\n{claims}",
            "Claims:\n{claims}\n\nDraft the patent abstract for these claims.",
            "Based on the following patent claims, write the abstract of the patent.\n\n{claims}",
        ),
        "zh": (
            "请根据以下权利要求撰写专利摘要。\n\n{claims}",
            "权利要求书：\n{claims}\n\n请为该专利撰写说明书摘要。",
            "以下是一件专利的权利要求，请写出其摘要。\n\n{claims}",
        ),
    },
    "ipc_classification": {
        "en": (
            "Assign {scheme} classification codes to the following patent.\n\n{document}",
            "{document}\n\nWhich {scheme} codes does this patent belong to?",
            "Classify this patent under the {scheme} scheme and name the sections involved.\n\n{document}",
        ),
        "zh": (
            "请为以下专利给出{scheme}分类号。\n\n{document}",
            "{document}\n\n该专利属于哪些{scheme}分类号？",
            "请按{scheme}对下列专利进行分类，并说明所属的部。\n\n{document}",
        ),
    },
    "claim_type": {
        "en": (
            "Identify the independent and dependent claims below, and for each dependent claim say "
            "which claim it refers to.\n\n{claims}",
            "{claims}\n\nWhich of these claims are independent, and which depend on which?",
            "Analyse the claim structure of this patent: list the independent claims and the "
            "dependencies of the dependent claims.\n\n{claims}",
        ),
        "zh": (
            "请指出以下权利要求中的独立权利要求和从属权利要求，并说明每项从属权利要求引用的权利要求。\n\n{claims}",
            "{claims}\n\n上述权利要求中哪些是独立权利要求？各从属权利要求分别引用哪项权利要求？",
            "分析该专利的权利要求结构：列出独立权利要求以及从属权利要求的引用关系。\n\n{claims}",
        ),
    },
    "summarize": {
        "en": (
            "Summarize this patent in one or two sentences, reusing its own wording.\n\n{document}",
            "{document}\n\nGive a short extractive summary of this patent, quoting its text.",
            "In a sentence or two taken from the text, what does this patent disclose and claim?\n\n{document}",
        ),
        "zh": (
            "请摘录原文，用一两句话概括该专利。\n\n{document}",
            "{document}\n\n请用原文中的语句对该专利作简要概括。",
            "用一两句话（摘自原文）说明该专利公开并要求保护的内容。\n\n{document}",
        ),
    },
    "qa_true_false": {
        "en": (
            "True or false? {question}",
            "Is the following statement true or false?\n\n{question}",
            "{question}\n\nAnswer True or False and explain why.",
        ),
        "zh": (
            "判断正误：{question}",
            "以下说法是否正确？\n\n{question}",
            "{question}\n\n请判断上述说法正确与否并说明理由。",
        ),
    },
    "qa_choice": {
        "en": (
            "{question}\n\n{options}\n\nAnswer with the letter of the correct option.",
            "Choose the correct answer.\n\n{question}\n{options}",
        ),
        "zh": (
            "{question}\n\n{options}\n\n请给出正确选项的字母。",
            "请选择正确答案。\n\n{question}\n{options}",
        ),
    },
    "qa_open": {
        "en": ("{question}", "Question: {question}"),
        "zh": ("{question}", "问题：{question}"),
    },
}


def _prompt(kind: str, lang: str, seed: int, source_id: str, **fields: str) -> str:
    options = TEMPLATES[kind][lang]
    return options[_choice(seed, kind, source_id, len(options))].format(**fields)


def _chat(prompt: str, answer: str, *, task: str, lang: str, source_id: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPTS[lang]},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ],
        "task": task,
        "lang": lang,
        "source_id": source_id,
    }


# ----------------------------------------------------------------------------- record tasks


def _document(meta: dict, lang: str, *, with_claims: list[Claim] | None = None) -> str:
    """Title + abstract (+ independent claims) block shown in classification / summary prompts."""
    labels = {"en": ("Title", "Abstract", "Independent claims"), "zh": ("名称", "摘要", "独立权利要求")}[lang]
    sep = ": " if lang == "en" else "："
    parts = []
    for label, name in zip(labels[:2], ("title", "abstract")):
        try:
            parts.append(f"{label}{sep}{_text_field(meta, name)}")
        except _Skip:
            pass
    if with_claims:
        parts.append(f"{labels[2]}{sep}\n{_render_claims(with_claims, lang)}")
    return "\n".join(parts)


def task_title_from_abstract(meta: dict, lang: str, seed: int, sid: str) -> tuple[str, str]:
    title = _text_field(meta, "title")
    abstract = _text_field(meta, "abstract")
    return _prompt("title_from_abstract", lang, seed, sid, abstract=abstract), title


def task_abstract_from_claims(meta: dict, lang: str, seed: int, sid: str) -> tuple[str, str]:
    claims = _budgeted(_claims(meta))
    abstract = _text_field(meta, "abstract")
    return _prompt("abstract_from_claims", lang, seed, sid, claims=_render_claims(claims, lang)), abstract


def task_ipc_classification(meta: dict, lang: str, seed: int, sid: str) -> tuple[str, str]:
    """IPC codes (CPC when the record has no IPC) from title and abstract; the answer lists the
    normalized codes and the meaning of each section they fall in."""
    try:
        scheme, codes = "IPC", _codes(meta, "ipc")
    except _Skip as ipc_problem:
        try:
            scheme, codes = "CPC", _codes(meta, "cpc")
        except _Skip:
            raise ipc_problem from None
    document = _document(meta, lang)
    if not document:
        raise _Skip("missing:title_and_abstract")
    sections = list(dict.fromkeys(code[0] for code in codes))
    if lang == "en":
        meaning = "; ".join(f"{s} ({IPC_SECTIONS[s][0]})" for s in sections)
        answer = f"{scheme} codes: {', '.join(codes)}.\nSection{'s' if len(sections) > 1 else ''}: {meaning}."
    else:
        meaning = "、".join(f"{s}部（{IPC_SECTIONS[s][1]}）" for s in sections)
        answer = f"{scheme}分类号：{'、'.join(codes)}。\n所属部：{meaning}。"
    return _prompt("ipc_classification", lang, seed, sid, scheme=scheme, document=document), answer


def claim_structure_answer(claims: list[Claim], lang: str) -> str:
    """'Independent claims: 1, 5. / Dependent claims: - claim 2 depends on claim 1 ...'."""
    independent = [c.number for c in claims if c.independent]
    dependent = [c for c in claims if c.refs]
    canceled = [c.number for c in claims if c.canceled]
    if lang == "en":
        lines = [f"Independent claims: {', '.join(map(str, independent)) or 'none'}."]
        if dependent:
            lines.append("Dependent claims:")
            for c in dependent:
                if len(c.refs) == 1:
                    lines.append(f"- claim {c.number} depends on claim {c.refs[0]}")
                else:
                    refs = ", ".join(map(str, c.refs[:-1])) + f" or {c.refs[-1]}"
                    lines.append(f"- claim {c.number} depends on claims {refs} (multiple dependency)")
        else:
            lines.append("Dependent claims: none.")
        if canceled:
            lines.append(f"Canceled claims: {_number_runs(canceled)}.")
        return "\n".join(lines)
    lines = [f"独立权利要求：{'、'.join(map(str, independent)) or '无'}。"]
    if dependent:
        lines.append("从属权利要求：")
        for c in dependent:
            if len(c.refs) == 1:
                lines.append(f"- 权利要求{c.number}引用权利要求{c.refs[0]}")
            else:
                refs = "、".join(map(str, c.refs[:-1])) + f"或{c.refs[-1]}"
                lines.append(f"- 权利要求{c.number}引用权利要求{refs}（多项从属）")
    else:
        lines.append("从属权利要求：无。")
    if canceled:
        lines.append(f"已删除的权利要求：{_number_runs(canceled)}。")
    return "\n".join(lines)


def task_claim_type(meta: dict, lang: str, seed: int, sid: str) -> tuple[str, str]:
    claims = _budgeted(_claims(meta))
    prompt = _prompt("claim_type", lang, seed, sid, claims=_render_claims(claims, lang))
    return prompt, claim_structure_answer(claims, lang)


def task_summarize(meta: dict, lang: str, seed: int, sid: str) -> tuple[str, str]:
    """Extractive summary: the abstract's first sentence, then what the first independent claim
    claims (its preamble). Claims are optional; without them the summary is the first sentence."""
    abstract = _text_field(meta, "abstract")
    try:
        independent = [c for c in _budgeted(_claims(meta)) if c.independent]
    except _Skip:
        independent = []
    sentence = first_sentence(abstract, lang)
    answer = sentence
    if independent:
        head = _preamble(independent[0].text, lang)
        if head and lang == "en":
            first, _, rest = head.partition(" ")
            head = f"{first.lower()} {rest}".strip() if first in ("A", "An", "The") else head
            answer = f"{sentence} Claim {independent[0].number} is directed to {head}."
        elif head:
            answer = f"{sentence}权利要求{independent[0].number}要求保护{head}。"
    document = _document(meta, lang, with_claims=independent)
    return _prompt("summarize", lang, seed, sid, document=document), answer


RECORD_TASK_BUILDERS = {
    "title_from_abstract": task_title_from_abstract,
    "abstract_from_claims": task_abstract_from_claims,
    "ipc_classification": task_ipc_classification,
    "claim_type": task_claim_type,
    "summarize": task_summarize,
}


def _record_lang(record: dict, meta: dict) -> str:
    lang = record.get("lang")
    if lang in LANGS:
        return lang
    if lang is not None and lang != "":
        raise _Skip("unsupported_lang")
    sample = " ".join(str(meta.get(k) or "") for k in ("title", "abstract")) or str(record.get("text") or "")
    detected = detect_lang(sample)
    if detected is None:
        raise _Skip("unsupported_lang")
    return detected


def _record_context(record) -> tuple[dict, str, str]:
    """(meta, lang, id) of a record, or a _Skip that applies to every task."""
    if not isinstance(record, dict):
        raise _Skip("not_a_record")
    sid = record.get("id")
    if not isinstance(sid, str) or not sid:
        raise _Skip("missing:id")
    meta = record.get("meta")
    if not isinstance(meta, dict):
        raise _Skip("missing:meta")
    if meta.get("kind") == "text":
        raise _Skip("not_a_patent")
    if meta.get("rewritten_from") and meta.get("original_kept"):
        # an LLM rewrite whose original is still in the stream carries the same structured
        # fields: synthesizing from both would duplicate every example
        raise _Skip("rewritten_copy")
    return meta, _record_lang(record, meta), sid


# ----------------------------------------------------------------------------- question sets


def _qa_item(item, seed: int) -> tuple[str, str, str, str]:
    """(prompt, answer, lang, source_id) for one question; three shapes are understood:
    patent-bar true/false ``{"question", "answer": bool, "explanation"}``; MOZIP IPQuiz
    ``{"problem", "candidates": {letter: text}, "answer": letter, "language"}``; and generic
    ``{"question", "answer": str}``."""
    if not isinstance(item, dict):
        raise _Skip("not_a_record")
    question = item.get("question", item.get("problem"))
    if not isinstance(question, str) or not clean_text(question):
        raise _Skip("missing:question")
    question = clean_text(question)
    lang = item.get("language") or item.get("lang") or detect_lang(question)
    lang = {"english": "en", "chinese": "zh"}.get(str(lang).lower(), lang)
    if lang not in LANGS:
        raise _Skip("unsupported_lang")
    sid = item.get("id")
    sid = str(sid) if sid not in (None, "") else "qa-" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:16]
    answer = item.get("answer")
    if isinstance(answer, bool):
        verdict = {"en": ("True.", "False."), "zh": ("正确。", "错误。")}[lang][0 if answer else 1]
        explanation = clean_text(item.get("explanation") or "") if isinstance(item.get("explanation"), str) else ""
        text = f"{verdict} {explanation}".strip() if lang == "en" else f"{verdict}{explanation}"
        return _prompt("qa_true_false", lang, seed, sid, question=question), text, lang, sid
    candidates = item.get("candidates")
    if isinstance(candidates, dict) and candidates:
        letter = str(answer).strip().upper() if answer is not None else ""
        options = {str(k).strip().upper(): clean_text(str(v)) for k, v in candidates.items()}
        if letter not in options:
            raise _Skip("answer_not_a_candidate")
        rendered = "\n".join(f"{k}. {v}" for k, v in options.items())
        prompt = _prompt("qa_choice", lang, seed, sid, question=question, options=rendered)
        return prompt, f"{letter}. {options[letter]}", lang, sid
    if answer is None:
        raise _Skip("missing:answer")
    if not isinstance(answer, (str, int, float)):
        raise _Skip("bad_type:answer")
    answer = clean_text(str(answer))
    if not answer:
        raise _Skip("missing:answer")
    return _prompt("qa_open", lang, seed, sid, question=question), answer, lang, sid


def load_qa_files(paths: Iterable[str | os.PathLike], *, base_dir: str | os.PathLike | None = None,
                  stats: SynthStats | None = None) -> list[dict]:
    """Read question sets (JSONL, or JSON holding a list or ``{"data": [...]}``). A missing file
    is a configuration error; a malformed line is counted under ``qa`` / ``malformed_line``."""
    items: list[dict] = []
    for raw_path in paths:
        path = Path(raw_path)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            raise ConfigError(f"synth.qa_files: file not found: {path}")
        if path.suffix == ".json":
            try:
                rows = list(read_json_records(path, field="data"))
            except ValueError as exc:
                raise ConfigError(f"synth.qa_files: {path} must hold a list of questions ({exc})") from None
        else:
            rows = iter_jsonl(path)
        for _, item, reason in rows:
            if reason is None:
                items.append(item)
            elif stats is not None:
                stats.skip("qa", "malformed_line" if reason != "not_an_object" else "not_a_record")
    return items


# ----------------------------------------------------------------------------- driver


def _capped(stats: SynthStats, task: str, max_per_task: int | None) -> bool:
    return max_per_task is not None and stats.produced[task] >= max_per_task


def _synthesize_record(record, tasks: list[str], seed: int, stats: SynthStats,
                       max_per_task: int | None) -> Iterator[dict]:
    record_tasks = [t for t in tasks if t in RECORD_TASK_BUILDERS]
    try:
        meta, lang, sid = _record_context(record)
    except _Skip as skip:
        for task in record_tasks:
            stats.skip(task, skip.reason)
        return
    for task in record_tasks:
        if _capped(stats, task, max_per_task):
            stats.skip(task, "max_per_task")
            continue
        try:
            prompt, answer = RECORD_TASK_BUILDERS[task](meta, lang, seed, sid)
        except _Skip as skip:
            stats.skip(task, skip.reason)
            continue
        stats.produced[task] += 1
        yield _chat(prompt, answer, task=task, lang=lang, source_id=sid)


def _synthesize_qa(qa_sets: list, seed: int, stats: SynthStats, max_per_task: int | None) -> Iterator[dict]:
    for item in qa_sets:
        stats.qa_items += 1
        if _capped(stats, "qa", max_per_task):
            stats.skip("qa", "max_per_task")
            continue
        try:
            prompt, answer, lang, sid = _qa_item(item, seed)
        except _Skip as skip:
            stats.skip("qa", skip.reason)
            continue
        stats.produced["qa"] += 1
        yield _chat(prompt, answer, task="qa", lang=lang, source_id=sid)


def synthesize(records: Iterable[dict], *, tasks: list[str], seed: int, qa_sets: list[dict] | None = None,
               stats: SynthStats | None = None, max_per_task: int | None = None) -> Iterator[dict]:
    """Yield chat records for every requested task of every record, then one per question of
    ``qa_sets`` when ``"qa"`` is among ``tasks``. Order: record by record, tasks in the order
    given; then questions in order. ``stats`` (optional) is filled while iterating: read it
    after the generator is exhausted. ``max_per_task`` caps each task's output (the rest is
    counted as skipped with reason ``max_per_task``)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"synth.tasks: unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    stats = stats if stats is not None else SynthStats()
    if any(t in RECORD_TASK_BUILDERS for t in tasks):
        for record in records:
            stats.records += 1
            yield from _synthesize_record(record, tasks, seed, stats, max_per_task)
    if "qa" in tasks:
        yield from _synthesize_qa(qa_sets or [], seed, stats, max_per_task)


def write_synth(records: Iterable[dict], cfg: SynthConfig, out_dir: str | os.PathLike, *,
                base_dir: str | os.PathLike | None = None) -> dict:
    """Run synthesis per ``cfg`` and write ``out_dir/cfg.output_name`` atomically (one chat
    record per line, UTF-8, keys in a fixed order). Returns the stats dict for the step report.
    Relative ``qa_files`` resolve against ``base_dir`` (typically the config file's folder)."""
    from patentgpt.io import atomic_open

    stats = SynthStats()
    qa_sets = load_qa_files(cfg.qa_files, base_dir=base_dir, stats=stats) if "qa" in cfg.tasks else None
    out_path = Path(out_dir) / cfg.output_name
    with atomic_open(out_path, "w") as fh:
        for example in synthesize(records, tasks=cfg.tasks, seed=cfg.seed, qa_sets=qa_sets, stats=stats,
                                  max_per_task=cfg.max_per_task):
            fh.write(json.dumps(example, ensure_ascii=False) + "\n")
    return {"output": str(out_path), **stats.as_dict()}
