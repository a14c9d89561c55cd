"""Chat and preference data for the SFT / reward-model tests: the pipeline's instruction synthesis
run on the embedded demo corpus (real patent records), plus planted bad records."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CORPUS

TASKS = ["title_from_abstract", "ipc_classification", "claim_type"]


def synth_records() -> list[dict]:
    from patentgpt.data.pipeline.synth import synthesize

    docs = []
    for name in ("patents_en.jsonl", "patents_zh.jsonl"):
        for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            docs.append({"id": r["id"], "lang": r["lang"], "meta": r})
    return list(synthesize(docs, tasks=TASKS, seed=1234))


BAD_LINES = [
    "{not json",
    json.dumps({"messages": [{"role": "user", "content": "a question with no answer"}]}),
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "wizard", "content": "a"}]}),
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
    json.dumps([1, 2, 3]),
    json.dumps({"messages": [{"role": "user", "content": "long " * 3000}, {"role": "assistant", "content": "ok"}]}),
]
BAD_REASONS = {"malformed_json", "no_assistant_turn", "unknown_role:wizard", "empty_content",
               "not_an_object", "longer_than_seq_len"}


def write_chat(path: Path, records: list[dict], bad: bool = False) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if bad:
        for i, b in enumerate(BAD_LINES):
            lines.insert(3 + 7 * i, b)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
