"""PPO prompts from chat JSONL: a conversation without its final assistant turn (kept as the
reference answer for exact-answer rewards), or a conversation that ends with a user turn.
Records that cannot be used are counted by reason and set aside (``rejects.jsonl``)."""

from __future__ import annotations


from patentgpt.data.chat import _check, to_messages


def to_prompt(record: dict, fmt: str = "auto") -> tuple[tuple[list[dict], str | None] | None, str | None]:
    """((prompt messages, reference answer or None), None) or (None, reason)."""
    if isinstance(record.get("prompt"), str) and "messages" not in record:
        msgs, reason = _check([{"role": "user", "content": record["prompt"]}])
        return (None, reason) if reason else ((msgs, None), None)
    messages, reason = to_messages(record, fmt)
    if reason in ("no_assistant_turn", "last_turn_not_assistant") and isinstance(record.get("messages"), list):
        messages, reason = _check(record["messages"])
        if reason is None:
            return ((messages, None), None) if messages[-1]["role"] == "user" else (None, "prompt_ends_with_assistant")
    if reason is not None:
        return None, reason
    prompt = messages[:-1]
    if not any(m["role"] == "user" for m in prompt):
        return None, "no_user_turn"
    return (prompt, messages[-1]["content"]), None


def prompt_converter(tokenizer, max_prompt_len: int):
    """A record converter for :func:`patentgpt.train.stages.records.read_sources`: a prompt's
    ((ids, prompt messages, reference answer), language, None), or (None, None, reason)."""
    from patentgpt.data.chat import record_lang
    from patentgpt.data.chat_loader import render_chat

    def convert(record: dict, spec):
        item, reason = to_prompt(record, spec.format)
        if reason is None:
            text = render_chat(tokenizer, item[0], add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > max_prompt_len:
                reason = "longer_than_max_prompt_len"
        if reason is not None:
            return None, None, reason
        return (ids, item[0], item[1]), record_lang(record, item[0]), None

    return convert
