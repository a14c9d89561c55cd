"""Long-context evaluation (patentgpt/eval/long_context.py): the passkey grid finds a key exactly
where a model can see it, perplexity buckets cover the right tokens, RoPE overrides apply."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from patentgpt.eval.long_context import (PasskeyTask, RopeOverride, build_passkey_items, bucket_ppl, load_lc_task,
                                         passkey_grid, read_documents,
                                         score_passkey, token_nll)


def _copy_oracle(window: int | None, ngram: int = 6):
    """A scorer that predicts the token that followed the longest earlier match (up to ``ngram``
    tokens) of the current suffix, looking back at most ``window`` tokens: an idealised induction
    head. Returns lm-eval's ``(logprob, is_greedy)`` per request."""

    def predict(seq: list[int]) -> int | None:
        lo = 0 if window is None else max(0, len(seq) - window)
        for n in range(min(ngram, len(seq) - 1), 0, -1):
            suffix = seq[-n:]
            for s in range(len(seq) - n - 1, lo - 1, -1):
                if seq[s:s + n] == suffix:
                    return seq[s + n]
        return None

    def score(reqs):
        out = []
        for _, ctx, cont in reqs:
            seq, lp, greedy = list(ctx), 0.0, True
            for t in cont:
                hit = predict(seq) == t
                lp += 0.0 if hit else math.log(1e-6)
                greedy &= hit
                seq.append(t)
            out.append((lp, greedy))
        return out

    return score


@pytest.fixture(scope="module")
def tok(ip_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ip_tokenizer_dir)


@pytest.fixture(scope="module")
def passkey_task() -> PasskeyTask:
    spec = load_lc_task("passkey")
    return PasskeyTask.model_validate({**spec.model_dump(), "lengths": [128, 256], "depths": [0.0, 0.5, 1.0],
                                       "trials": 3})


@pytest.fixture(scope="module")
def filler(tok, demo_corpus):
    texts = [json.loads(line)["abstract"] for line in open(demo_corpus / "patents_en.jsonl", encoding="utf-8")]
    return np.asarray(tok("\n".join(texts), add_special_tokens=False)["input_ids"], dtype=np.int64)


def test_passkey_prompts_have_the_length_and_the_key_at_the_depth(passkey_task, tok, filler):
    items = build_passkey_items(passkey_task, tok, filler)
    assert len(items) == 2 * 3 * 3
    for it in items:
        assert len(it["context"]) == it["length"]
        needle = tok(passkey_task.needle.format(key=it["key"]), add_special_tokens=False)["input_ids"]
        assert it["context"][it["needle_at"]:it["needle_at"] + len(needle)] == needle
        assert len({tuple(c) for c in it["continuations"]}) == passkey_task.distractors + 1
    # the needle moves from the start to the end of the filler as depth goes 0 -> 1
    at = {(it["length"], it["depth"]): it["needle_at"] for it in items if it["trial"] == 0}
    for n in (128, 256):
        assert at[(n, 0.0)] < at[(n, 0.5)] < at[(n, 1.0)]
        assert at[(n, 1.0)] - at[(n, 0.0)] > n // 2


def test_passkey_accuracy_follows_what_the_model_can_see(passkey_task, tok, filler):
    items = build_passkey_items(passkey_task, tok, filler)
    full = passkey_grid(score_passkey(items, _copy_oracle(None)), passkey_task.lengths, passkey_task.depths)
    assert full["mean_accuracy"] == 1.0 and np.all(np.asarray(full["greedy"]) == 1.0)
    # a copier that sees only the last 64 tokens finds keys placed near the question, not early ones
    outs = score_passkey(items, _copy_oracle(64))
    near = passkey_grid(outs, passkey_task.lengths, passkey_task.depths)
    acc = np.asarray(near["accuracy"])  # rows: depths 0, 0.5, 1
    assert np.all(acc[-1] == 1.0) and acc[0].mean() <= 0.35  # early keys: only lucky digit guesses
    for o, it in zip(outs, items):
        visible = len(it["context"]) - it["needle_at"] <= 64 - 8
        if visible:
            assert o["correct"], (o, it["needle_at"])
    # nothing to copy: a scorer that prefers a fixed wrong key is never right
    n = passkey_task.distractors + 1  # each item asks for its key, then its distractors
    wrong = score_passkey(items, lambda reqs: [(-float(i % n != 3), False) for i in range(len(reqs))])
    assert passkey_grid(wrong, passkey_task.lengths, passkey_task.depths)["mean_accuracy"] == 0.0


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_lc")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_bucket_perplexity_matches_the_models_own_loss(tiny_model_dir, tok, demo_corpus):
    """Buckets against transformers' loss with every label outside the bucket masked."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    texts, _, _ = read_documents(load_lc_task("position_ppl").fallback, [])
    ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"][:63] for t in texts[:3]]
    windows = np.asarray(ids, dtype=np.int64)
    rows = bucket_ppl(token_nll(model, windows, batch_size=2), [0, 16, 48, 64])
    assert [r["tokens"] for r in rows] == [3 * 15, 3 * 32, 3 * 16]  # position 0 is never predicted
    x = torch.as_tensor(windows)
    for r in rows:
        labels = x.clone()
        pos = torch.arange(64).expand_as(x)
        labels[(pos < r["lo"]) | (pos >= r["hi"])] = -100
        with torch.no_grad():
            want = model(input_ids=x, labels=labels).loss.item()
        assert r["nll"] == pytest.approx(want, rel=1e-5)


def test_cli_runs_both_tasks_with_a_rope_override_and_compares(tiny_model_dir, tmp_path, capsys):
    from patentgpt.cli import main

    common = ["--model", str(tiny_model_dir), "--lengths", "64,128", "--depths", "0,1", "--trials", "2",
              "--buckets", "0,64,128", "--max-docs", "4"]
    assert main(["eval", "long-context", *common, "--out", str(tmp_path / "none")]) == 0
    assert main(["eval", "long-context", *common, "--out", str(tmp_path / "pi1"), "--rope", "linear",
                 "--factor", "1", "--original-length", "128"]) == 0
    assert main(["eval", "long-context", *common, "--out", str(tmp_path / "yarn"), "--rope", "yarn",
                 "--factor", "2", "--original-length", "64"]) == 0
    res = {k: json.loads((tmp_path / k / "long_context.json").read_text()) for k in ("none", "pi1", "yarn")}
    for r in res.values():
        pk, pp = r["tasks"]["passkey"], r["tasks"]["position_ppl"]
        assert np.asarray(pk["accuracy"]).shape == (2, 2) and 0 <= pk["mean_accuracy"] <= 1
        assert [b["bucket"] for b in pp["buckets"]] == ["0-64", "64-128"] and pp["windows"] >= 4
    for k in ("none", "yarn"):
        for name in ("long_context.md", "passkey.png", "position_ppl.png"):
            assert (tmp_path / k / name).stat().st_size > 0
    y = res["yarn"]
    assert y["rope_parameters"]["rope_type"] == "yarn" and y["rope_parameters"]["original_max_position_embeddings"] == 64
    assert y["max_position_embeddings"] == 128
    ppl = {k: [b["ppl"] for b in r["tasks"]["position_ppl"]["buckets"]] for k, r in res.items()}
    assert ppl["pi1"] == pytest.approx(ppl["none"], rel=1e-9)  # PI with factor 1 is the identity
    assert max(abs(a - b) for a, b in zip(ppl["yarn"], ppl["none"])) > 1e-3  # the override reached the model
    assert main(["eval", "long-context", "--compare", str(tmp_path / "none"), str(tmp_path / "yarn"),
                 "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| none | none |" in table and "| yarn | yarn(x2) |" in table and "ppl 64-128" in table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


def test_incomplete_rope_override_is_a_config_error(tiny_model_dir, tmp_path, capsys):
    from patentgpt.cli import main

    assert main(["eval", "long-context", "--model", str(tiny_model_dir), "--rope", "yarn", "--factor", "4",
                 "--out", str(tmp_path)]) == 2
    assert "original_length" in capsys.readouterr().err
    with pytest.raises(ValueError, match="factor"):
        RopeOverride(type="linear")
    assert main(["eval", "long-context", "--model", str(tiny_model_dir), "--rope", "linear", "--factor", "3",
                 "--original-length", "64", "--lengths", "128", "--out", str(tmp_path)]) == 2
    assert "rope.rope_scaling.factor: 3 does not match" in capsys.readouterr().err
    assert main(["eval", "long-context", "--model", str(tiny_model_dir), "--tasks", "nope", "--out",
                 str(tmp_path)]) == 2
    assert "unknown long-context task" in capsys.readouterr().err


def test_shared_long_patents_are_read(shared_data):
    spec = load_lc_task("position_ppl")
    texts, used, skipped = read_documents(spec.data, spec.fallback)
    assert used == [spec.data[0].path] and len(texts) == 13 and sum(skipped.values()) == 0
    assert min(len(t) for t in texts) > 8000
