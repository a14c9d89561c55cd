"""The chat-record schema shared by synthesis, SFT, the reward model and PPO prompts.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}``.
Records arrive in three formats, recognised per record (or forced per source):

* ``messages``: ``{"messages": [...]}`` (the pipeline's synthesized instructions, OpenAI style);
* ``alpaca``: ``{"instruction", "input", "output", optional "system", "history": [[q, a], ...]}``;
* ``sharegpt``: ``{"conversations": [{"from": "human" | "gpt" | "system", "value"}], optional "system"}``.

Preference pairs add a chosen and a rejected reply to a prompt conversation:

* ``{"prompt": str | messages, "chosen": str, "rejected": str}`` or ``{"messages": prompt, ...}``;
* sharegpt DPO: ``{"conversations": prompt, "chosen": {"from", "value"}, "rejected": {"from", "value"}}``;
* hh-rlhf: ``{"chosen": "\\n\\nHuman: ... \\n\\nAssistant: ...", "rejected": "..."}`` (whole dialogues
  sharing everything but the last reply).

Conversion never guesses silently: a record that does not fit returns a reason (counted and set
aside by the caller), such as ``no_assistant_turn`` or ``empty_content``.
"""

from __future__ import annotations

import re

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "bot": "assistant", "model": "assistant"}
FORMATS = ("messages", "alpaca", "sharegpt")


def detect_format(record: dict) -> str | None:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _check(messages: list) -> tuple[list[dict] | None, str | None]:
    out = []
    for m in messages:
        if not isinstance(m, dict):
            return None, "message_not_an_object"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return None, f"unknown_role:{str(role)[:20]}"
        if not isinstance(content, str):
            return None, "content_not_a_string"
        if not content.strip():
            return None, "empty_content"
        out.append({"role": role, "content": content})
    if not out:
        return None, "no_messages"
    return out, None


def _from_sharegpt_turns(turns, system=None) -> tuple[list[dict] | None, str | None]:
    if not isinstance(turns, list):
        return None, "conversations_not_a_list"
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    for t in turns:
        if not isinstance(t, dict):
            return None, "message_not_an_object"
        role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
        if role is None:
            return None, f"unknown_role:{str(t.get('from'))[:20]}"
        messages.append({"role": role, "content": t.get("value")})
    return _check(messages)


def to_messages(record: dict, fmt: str = "auto") -> tuple[list[dict] | None, str | None]:
    """A training conversation (ending with an assistant turn), or (None, reason)."""
    fmt = detect_format(record) if fmt == "auto" else fmt
    if fmt == "messages":
        if not isinstance(record.get("messages"), list):
            return None, "messages_not_a_list"
        messages, reason = _check(record["messages"])
    elif fmt == "sharegpt":
        messages, reason = _from_sharegpt_turns(record.get("conversations"), record.get("system"))
    elif fmt == "alpaca":
        instruction, inp, output = record.get("instruction"), record.get("input") or "", record.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(inp, str):
            return None, "alpaca_field_not_a_string"
        messages = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) \
            and record["system"].strip() else []
        for pair in record.get("history") or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                return None, "alpaca_bad_history"
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        user = f"{instruction}\n{inp}" if inp.strip() else instruction
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        messages, reason = _check(messages)
    else:
        return None, "unknown_format"
    if reason:
        return None, reason
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant_turn"
    if messages[-1]["role"] != "assistant":
        return None, "last_turn_not_assistant"
    return messages, None


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_dialogue(text: str) -> list[dict] | None:
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]


def _reply(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("value", value.get("content")), str):
        return value.get("value", value.get("content"))
    if isinstance(value, list) and value and isinstance(value[-1], dict):  # a whole conversation: its last reply
        return _reply(value[-1])
    return None


def to_pair(record: dict) -> tuple[tuple[list[dict], str, str] | None, str | None]:
    """(prompt conversation, chosen reply, rejected reply), or (None, reason)."""
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if chosen is None or rejected is None:
        return None, "missing:chosen_or_rejected"
    if "conversations" in record:
        prompt, reason = _from_sharegpt_turns(record["conversations"], record.get("system"))
    elif "messages" in record:
        prompt, reason = _check(record["messages"]) if isinstance(record["messages"], list) else (None, "messages_not_a_list")
    elif "prompt" in record:
        p = record["prompt"]
        prompt, reason = (_check([{"role": "user", "content": p}]) if isinstance(p, str)
                          else _check(p) if isinstance(p, list) else (None, "prompt_not_text_or_messages"))
    elif isinstance(chosen, str) and isinstance(rejected, str) and chosen.startswith("\n\nHuman:"):
        a, b = _hh_dialogue(chosen), _hh_dialogue(rejected)
        if not a or not b or a[-1]["role"] != "assistant" or b[-1]["role"] != "assistant":
            return None, "hh_unparsable_dialogue"
        if a[:-1] != b[:-1]:
            return None, "hh_prompts_differ"
        prompt, reason = _check(a[:-1])
        chosen, rejected = a[-1]["content"], b[-1]["content"]
    else:
        return None, "missing:prompt"
    if reason:
        return None, reason
    if prompt[-1]["role"] == "assistant":
        return None, "prompt_ends_with_assistant"
    c, r = _reply(chosen), _reply(rejected)
    if c is None or r is None:
        return None, "reply_not_text"
    if not c.strip() or not r.strip():
        return None, "empty_reply"
    if c == r:
        return None, "chosen_equals_rejected"
    return (prompt, c, r), None


def record_lang(record: dict, messages: list[dict]) -> str | None:
    """The record's ``lang`` field, else the language detected from its text."""
    lang = record.get("lang")
    if isinstance(lang, str) and lang:
        return lang
    from patentgpt.data.lang import detect_lang

    return detect_lang(" ".join(m["content"] for m in messages)[:2000])
