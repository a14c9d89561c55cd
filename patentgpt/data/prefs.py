"""Synthetic preference pairs from the synthesized IP instructions, for the demo and tests.

For each synthesized chat record the *chosen* reply is its answer (extracted from the patent, so
correct) and the *rejected* reply is a corrupted copy whose flaw a patent professional would
catch. A seeded hash of the record picks one of three kinds: the task's own corruption (another
patent's title ``wrong_title``, another patent's IPC codes ``wrong_ipc``, a claim made to depend
on the wrong claim ``wrong_dependency``, an abstract or summary cut off mid-way ``truncated``),
the same task's answer for a patent in the other language (``wrong_language``: an English
question answered in Chinese), or the answer cut off after a third (``truncated``). Every pair says ``"synthetic": true`` and names its corruption: this is a
stand-in for human preference labels, good for exercising the reward model, not for judging
helpfulness. The same input and seed give the same pairs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from patentgpt.data.jsonl import iter_jsonl

_DEP = re.compile(r"(depends on claim |从属于权利要求|引用权利要求)(\d+)")
_IPC = re.compile(r"\b[A-H]\d{2}[A-Z]\s*\d+/\d+\b")


def _pick(seed: int, key: str, n: int) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def _truncate(text: str) -> str | None:
    cut = max(1, len(text) // 3)
    return text[:cut].rstrip() if cut < len(text) - 1 else None


def _wrong_dependency(text: str, seed: int, key: str) -> str | None:
    deps = list(_DEP.finditer(text))
    if not deps:
        return None
    m = deps[_pick(seed, key, len(deps))]
    n = int(m.group(2))
    wrong = n + 1 if n > 1 and _pick(seed, key + "+", 2) else n + 2
    return text[: m.start(2)] + str(wrong) + text[m.end(2):]


def corrupt(task: str, answer: str, others: list[str], seed: int, key: str) -> tuple[str | None, str]:
    """(rejected reply or None, corruption name) for one synthesized answer."""
    if task == "claim_type":
        return _wrong_dependency(answer, seed, key), "wrong_dependency"
    if task in ("abstract_from_claims", "summarize"):
        return _truncate(answer), "truncated"
    pool = [o for o in others if o != answer]
    if not pool:
        return None, "no_alternative"
    other = pool[_pick(seed, key, len(pool))]
    if task == "ipc_classification":
        codes = _IPC.findall(other)
        if not codes or set(codes) == set(_IPC.findall(answer)):
            return None, "no_alternative"
        return _IPC.sub(lambda _m, it=iter(codes * 8): next(it), answer), "wrong_ipc"
    return other, "wrong_title" if task == "title_from_abstract" else "other_answer"


def choose_corruption(task: str, answer: str, answers: dict, lang: str | None, seed: int,
                       key: str) -> tuple[str | None, str]:
    """(rejected reply or None, corruption name): the kind is picked by a seeded hash of ``key``."""
    kind = _pick(seed, key + "#kind", 3)
    if kind == 1:
        other_lang = [o for (t, lg), v in answers.items() if t == task and lg != lang for o in v]
        if other_lang:
            return other_lang[_pick(seed, key + "#lang", len(other_lang))], "wrong_language"
    if kind == 2:
        cut = _truncate(answer)
        if cut:
            return cut, "truncated"
    return corrupt(task, answer, answers.get((task, lang), []), seed, key)


def make_preference_pairs(synth_file: str | Path, out: str | Path, seed: int = 1234) -> dict:
    """Write ``out`` (JSONL pairs) from the pipeline's ``sft_synth.jsonl``; returns counts."""
    from patentgpt.io import atomic_open

    rows, skipped = [], Counter()
    for _, record, reason in iter_jsonl(synth_file):
        if reason is not None:
            skipped[reason] += 1
            continue
        msgs = record.get("messages")
        if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
            skipped["no_final_assistant_turn"] += 1
            continue
        rows.append(record)
    answers = defaultdict(list)  # (task, lang) -> answers, for swaps within the same task and language
    for r in rows:
        answers[(r.get("task"), r.get("lang"))].append(r["messages"][-1]["content"])
    made, by_corruption = 0, Counter()
    with atomic_open(out) as fh:
        for i, r in enumerate(rows):
            task, answer = r.get("task"), r["messages"][-1]["content"]
            key = f"{r.get('source_id', i)}\x1f{task}"
            rejected, how = choose_corruption(task, answer, answers, r.get("lang"), seed, key)
            if rejected is None or rejected == answer:
                skipped[f"{task}:{how if rejected is None else 'unchanged'}"] += 1
                continue
            fh.write(json.dumps({"messages": r["messages"][:-1], "chosen": answer, "rejected": rejected,
                                 "task": task, "lang": r.get("lang"), "source_id": r.get("source_id"),
                                 "corruption": how, "synthetic": True}, ensure_ascii=False) + "\n")
            made += 1
            by_corruption[how] += 1
    return {"pairs": made, "by_corruption": dict(by_corruption), "skipped": dict(skipped), "out": str(out)}
