"""Chat and preference records in the formats users bring (real files in ../shared/data)."""

import json

from patentgpt.data.chat import to_messages, to_pair
from patentgpt.data.jsonl import read_json_records


def _convert(path, fn):
    kept, reasons = 0, {}
    for _, record, reason in read_json_records(path):
        if reason is None:
            _, reason = fn(record)
        if reason is None:
            kept += 1
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    return kept, reasons


def test_alpaca_instructions_become_conversations(shared_data):
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        kept, reasons = _convert(shared_data / "instructions" / name, to_messages)
        assert kept >= 990, (name, kept, reasons)
    rec = {"instruction": "Summarize", "input": "claim 1 ...", "output": "A summary", "system": "Be brief",
           "history": [["hi", "hello"]]}
    messages, _ = to_messages(rec)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[3]["content"] == "Summarize\nclaim 1 ..."


def test_preference_formats_become_pairs(shared_data):
    for name, at_least in (("dpo_en_demo.json", 295), ("dpo_zh_demo.json", 295), ("hh_rlhf_harmless_test.jsonl.gz", 2200)):
        kept, reasons = _convert(shared_data / "preferences" / name, to_pair)
        assert kept >= at_least, (name, kept, reasons)
        assert all(isinstance(r, str) and r for r in reasons)
    (prompt, chosen, rejected), _ = to_pair(json.loads(
        '{"chosen": "\\n\\nHuman: Is a patent a monopoly?\\n\\nAssistant: A limited one.",'
        ' "rejected": "\\n\\nHuman: Is a patent a monopoly?\\n\\nAssistant: No."}'))
    assert prompt == [{"role": "user", "content": "Is a patent a monopoly?"}]
    assert (chosen, rejected) == ("A limited one.", "No.")


def test_malformed_records_get_reasons():
    assert to_messages({"messages": "hi"}) == (None, "messages_not_a_list")
    assert to_messages({"conversations": [{"from": "alien", "value": "x"}]})[1] == "unknown_role:alien"
    assert to_messages({"foo": 1}) == (None, "unknown_format")
    assert to_pair({"prompt": "q", "chosen": "a", "rejected": "a"}) == (None, "chosen_equals_rejected")
    assert to_pair({"prompt": "q", "chosen": "a"}) == (None, "missing:chosen_or_rejected")
