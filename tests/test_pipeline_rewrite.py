"""LLM rewriting with a tiny random LLaMA and the demo IP tokenizer (CPU, seconds).

The model is random, so its text is gibberish; what is tested is the machinery: prompts,
left-padded batched greedy generation, prompt stripping, ids and provenance, selection,
degenerate outputs, and that batching gives exactly what one-by-one generation gives.
"""

from __future__ import annotations

import json

import pytest
import torch

from patentgpt.config import ConfigError, load_config
from patentgpt.data.pipeline.rewrite import (
    RewriteConfig,
    RewriteStats,
    _render,
    degenerate_reason,
    load_model,
    rewrite_documents,
    selection_reason,
    stop_ids,
)

MAX_NEW = 12


@pytest.fixture(autouse=True)
def _one_thread():
    """A 32-wide model gains nothing from threads, and on a shared 2-core machine thread
    hand-offs made these tests five times slower; restored afterwards for other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, ip_tokenizer_dir):
    """A 2-layer, 32-wide random LlamaForCausalLM saved with the demo tokenizer. The larger
    init scale makes its output depend clearly on the prompt, so a padding bug would show."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ip_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def docs(demo_corpus):
    """Demo abstracts cut to very different lengths (so batches really pad), plus a Chinese one."""
    rows = [json.loads(line) for line in (demo_corpus / "patents_en.jsonl").open(encoding="utf-8")][:4]
    out = [{"id": r["id"], "source": "demo", "loc": f"patents_en.jsonl:{i + 1}", "lang": "en",
            "text": r["abstract"][: (60, 900, 250, 500)[i]], "meta": {"title": r["title"], "ipc": r["ipc"]}}
           for i, r in enumerate(rows)]
    out.append({"id": "ZH-1", "source": "demo", "loc": "inline", "lang": "zh", "meta": {},
                "text": "本发明公开了一种压力传感器，包括第一导体和第二导体，两者形成电容。"})
    return out


def _cfg(model_dir, **kw) -> RewriteConfig:
    base = {"enabled": True, "model": str(model_dir), "batch_size": 2, "max_new_tokens": MAX_NEW,
            "max_input_tokens": 256}
    return load_config(RewriteConfig, data={**base, **kw})


def _reference(model, tok, cfg: RewriteConfig, doc: dict, text: str) -> str:
    """What the model generates for one unpadded prompt, prompt cut off: the ground truth."""
    prompt = cfg.prompt_template.format(text=text, lang={"en": "English", "zh": "Chinese"}[doc["lang"]])
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    new = [t for t in out[0, ids["input_ids"].shape[1]:].tolist() if t not in tok.all_special_ids]
    return tok.decode(new, skip_special_tokens=True).strip()


def test_batched_rewrite_matches_one_by_one_generation(tiny_model_dir, docs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _cfg(tiny_model_dir)
    stats = RewriteStats()
    out = list(rewrite_documents(docs, cfg, stats=stats))
    # originals kept, each followed by its rewrite
    assert [d["id"] for d in out] == [i for d in docs for i in (d["id"], d["id"] + "#rw")]
    assert out[0::2] == docs
    rewrites = out[1::2]
    for doc, rw in zip(docs, rewrites):
        assert rw["meta"]["rewritten_from"] == doc["id"] and rw["meta"]["rewrite_model"] == cfg.model
        assert rw["meta"]["original_kept"] is True
        provenance = ("rewritten_from", "rewrite_model", "original_kept")
        assert {k: v for k, v in rw["meta"].items() if k not in provenance} == doc["meta"]
        assert (rw["lang"], rw["source"], rw["loc"]) == (doc["lang"], doc["source"], doc["loc"])
        assert rw["text"].strip() and rw["text"] != doc["text"]
        assert "Rewritten text:" not in rw["text"] and doc["text"][:40] not in rw["text"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    inputs = [_step_input(tok, d["text"], cfg) for d in docs]
    n_cut = sum(text != d["text"] for text, d in zip(inputs, docs))
    assert 1 <= n_cut < len(docs)  # the long abstract is cut to fit max_input_tokens, short ones are not
    assert stats.as_dict() == {"docs": 5, "selected": 5, "rewritten": 5, "emitted": 10, "truncated_inputs": n_cut,
                               "kept_original_after_drop": 0, "generated_tokens": stats.generated_tokens,
                               "not_selected": {}, "dropped": {}}
    assert 0 < stats.generated_tokens <= 5 * MAX_NEW

    # ground truth: each prompt alone, unpadded, through plain generate (prompt stripped by hand)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for doc, text, rw in zip(docs, inputs, rewrites):
        assert rw["text"] == _reference(model, tok, cfg, doc, text), doc["id"]

    # batch size 1 gives the same; a second run (fresh load) is identical (greedy is deterministic)
    single = list(rewrite_documents(docs, cfg.model_copy(update={"batch_size": 1}), model=model, tokenizer=tok))
    assert single == out
    assert list(rewrite_documents(docs, cfg)) == out

    # without keep_original each rewrite replaces its original
    replaced = list(rewrite_documents(docs, cfg.model_copy(update={"keep_original": False}), model=model,
                                      tokenizer=tok))
    assert [d["id"] for d in replaced] == [d["id"] for d in rewrites]
    assert [d["text"] for d in replaced] == [d["text"] for d in rewrites]
    assert all(d["meta"]["original_kept"] is False for d in replaced)


def _step_input(tok, text: str, cfg: RewriteConfig) -> str:
    """The document text as the step puts it in the prompt: cut, at a token boundary, to the
    tokens that max_input_tokens leaves once the template itself is counted."""
    overhead = len(tok(cfg.prompt_template.format(text="", lang="English"))["input_ids"])
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    budget = cfg.max_input_tokens - overhead
    return text if len(enc["input_ids"]) <= budget else text[: enc["offset_mapping"][budget - 1][1]]


def test_degenerate_generations_are_dropped_and_originals_kept(tiny_model_dir, docs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: argmax is id 0, <unk>, a special token
    cfg = _cfg(tiny_model_dir, keep_original=False, max_new_tokens=3)
    stats = RewriteStats()
    out = list(rewrite_documents(docs[:3], cfg, stats=stats, model=model, tokenizer=tok))
    assert out == docs[:3]  # nothing usable was generated, so no document is lost
    assert stats.dropped == {"empty": 3} and stats.kept_original_after_drop == 3 and stats.rewritten == 0


def test_degenerate_reason():
    source = "A pump moves water through a pipe."
    assert degenerate_reason("", source) == "empty"
    assert degenerate_reason("  \n ", source) == "empty"
    assert degenerate_reason("…—。", source) == "empty"
    assert degenerate_reason("the pump " * 40, source) == "repetitive"
    assert degenerate_reason("泵" * 120, source) == "repetitive"
    assert degenerate_reason(" A pump moves  water\nthrough a pipe. ", source) == "copy_of_input"
    assert degenerate_reason("Water is moved through a pipe by a pump.", source) is None


def test_selection_by_language_and_fraction_without_loading_a_model(docs):
    cfg = load_config(RewriteConfig, data={"enabled": True, "model": "/nonexistent/model", "langs": ["other"]})
    stats = RewriteStats()
    assert list(rewrite_documents(docs, cfg, stats=stats)) == docs  # nothing selected: model never loaded
    assert stats.not_selected == {"lang_filtered": 5} and stats.emitted == 5
    assert selection_reason({"id": "x", "text": "  "}, cfg) == "no_text"

    ids = [{"id": f"doc-{i}", "text": "t", "lang": "en"} for i in range(2000)]
    half = RewriteConfig(model="m", fraction=0.5, seed=1)
    chosen = [d["id"] for d in ids if selection_reason(d, half) is None]
    assert 900 < len(chosen) < 1100
    assert chosen == [d["id"] for d in ids if selection_reason(d, half) is None]  # stable
    other_seed = half.model_copy(update={"seed": 2})
    assert chosen != [d["id"] for d in ids if selection_reason(d, other_seed) is None]
    assert {selection_reason(d, half) for d in ids} == {None, "fraction"}


def test_chat_template_prompts(tiny_model_dir, docs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = _cfg(tiny_model_dir, use_chat_template=True, max_new_tokens=3,
               prompt_template="Paraphrase in {lang}:\n{text}")
    prompt = _render(cfg, tok, "A pump.", "en")
    assert prompt == "<|im_start|>user\nParaphrase in English:\nA pump.<|im_end|>\n<|im_start|>assistant\n"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_ids(model, tok, cfg)  # a chat turn ends generation, not only EOS
    assert im_end not in stop_ids(model, tok, cfg.model_copy(update={"use_chat_template": False}))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    out = list(rewrite_documents(docs[:2], cfg, model=model, tokenizer=tok))
    assert torch.equal(torch.rand(3), expected)  # generation seeds a forked RNG: the caller's is untouched
    assert [d["id"] for d in out] == [docs[0]["id"], docs[0]["id"] + "#rw", docs[1]["id"], docs[1]["id"] + "#rw"]


def test_config_errors_name_the_key(tiny_model_dir):
    cases = [
        ({"prompt_template": "Rewrite this."}, "prompt_template: must contain the {text} placeholder"),
        ({"prompt_template": "{title}: {text}"}, "prompt_template: unknown placeholder {title}"),
        ({"prompt_template": "Rewrite {text"}, "prompt_template: malformed template"),
        ({"enabled": True}, "model: required when rewrite is enabled"),
        ({"model": "m", "dtype": "float8"}, "dtype"),
        ({"model": "m", "fraction": 0}, "fraction"),
        ({"model": "m", "langs": ["fr"]}, "langs.0"),
        ({"model": "m", "batch_size": 0}, "batch_size"),
        ({"model": "m", "temprature": 0.7}, "temprature: unknown key"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
            load_config(RewriteConfig, data=data)
    assert RewriteConfig().enabled is False  # a disabled step needs no model
    with pytest.raises(ConfigError, match="rewrite.model: cannot load"):
        load_model(RewriteConfig(enabled=True, model=str(tiny_model_dir / "missing")))
    docs = [{"id": "a", "lang": "en", "text": "A pump moves water."}]
    with pytest.raises(ConfigError, match="rewrite.max_input_tokens"):
        list(rewrite_documents(docs, _cfg(tiny_model_dir, max_input_tokens=8)))


def test_sampling_is_seeded(tiny_model_dir, docs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    sample = lambda seed: [d["text"] for d in rewrite_documents(  # noqa: E731
        docs, _cfg(tiny_model_dir, temperature=1.0, seed=seed, keep_original=False), model=model, tokenizer=tok)]
    first = sample(3)
    assert sample(3) == first
    assert sample(4) != first
    greedy = [d["text"] for d in rewrite_documents(docs, _cfg(tiny_model_dir, keep_original=False),
                                                    model=model, tokenizer=tok)]
    assert first != greedy


def test_windows_keep_input_order_with_unselected_documents(tiny_model_dir, docs, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.data.pipeline import rewrite

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    mixed = [docs[4], docs[0], docs[1], docs[4] | {"id": "ZH-2"}, docs[2], docs[3], {"id": "empty", "text": ""}]
    cfg = _cfg(tiny_model_dir, langs=["en"], max_new_tokens=4)
    whole = list(rewrite_documents(mixed, cfg, model=model, tokenizer=tok))
    monkeypatch.setattr(rewrite, "WINDOW_BATCHES", 1)  # windows of one batch (2 docs)
    stats = RewriteStats()
    windowed = list(rewrite_documents(mixed, cfg, model=model, tokenizer=tok, stats=stats))
    assert windowed == whole
    assert [d["id"] for d in windowed] == [
        "ZH-1", docs[0]["id"], docs[0]["id"] + "#rw", docs[1]["id"], docs[1]["id"] + "#rw", "ZH-2",
        docs[2]["id"], docs[2]["id"] + "#rw", docs[3]["id"], docs[3]["id"] + "#rw", "empty"]
    assert stats.not_selected == {"lang_filtered": 2, "no_text": 1} and stats.emitted == len(windowed)
