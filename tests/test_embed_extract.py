"""Embedding extraction: views through the project renderer, MiniLM equal to sentence-transformers,
decoder poolings independent of padding, Matryoshka, atomic output with the umask, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from patentgpt.config import ConfigError
from patentgpt.embed.extract import Embedder, default_model_dir, finish, read_embeddings
from patentgpt.embed.views import read_view_texts, render_view
from tests.conftest import CORPUS, REPO


def _patents(n=None):
    lines = (CORPUS / "patents_en.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines[:n]]


@pytest.fixture(scope="module")
def minilm():
    return Embedder()


def test_views_choose_sections_in_order():
    rec = _patents(1)[0]
    full = render_view(rec, "title+abstract+claims")
    assert full.index(rec["title"]) < full.index(rec["abstract"]) < full.index(rec["claims"][-1])
    assert "<|title|>" not in full and render_view(rec, "title", markers=True) == "<|title|>" + rec["title"]
    first = render_view(rec, "first_claim")
    assert first == rec["claims"][0] and rec["claims"][1] not in first
    assert render_view({"id": "x", "text": "body", "title": "T"}, "title") == "T"
    with pytest.raises(ConfigError, match="unknown section"):
        render_view(rec, "title+abstarct")


def test_bad_records_are_set_aside_with_reasons(tmp_path):
    good = _patents(2)
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([json.dumps(good[0]), "{broken", json.dumps({"title": "no id"}),
                               json.dumps({"id": "E1", "abstract": "only an abstract"}), json.dumps(good[0]),
                               json.dumps(good[1])]) + "\n", encoding="utf-8")
    ids, texts, rejects = read_view_texts(path, "title")
    assert ids == [good[0]["id"], good[1]["id"]] and texts == [good[0]["title"], good[1]["title"]]
    assert [r["reason"] for r in rejects] == ["malformed_json", "no_id", "empty_view", "duplicate_id"]


def test_minilm_matches_sentence_transformers_and_matryoshka(minilm):
    from sentence_transformers import SentenceTransformer

    texts = [render_view(r, "title+abstract+claims") for r in _patents(20)] + ["short", "a battery"]
    ours = minilm.encode(texts, batch_size=8)
    ref = SentenceTransformer(str(default_model_dir()), device="cpu").encode(texts, batch_size=8)
    assert minilm.pooling == "mean" and minilm.info.normalize and ours.shape == (22, 384)
    assert np.abs(ours - ref).max() < 1e-5
    raw = minilm.encode(texts, normalize=False, dim=64)
    small = minilm.encode(texts, dim=64)
    assert small.shape == (22, 64) and np.allclose(np.linalg.norm(small, axis=1), 1, atol=1e-5)
    assert np.allclose(small, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-3)
    with pytest.raises(ConfigError, match="dim"):
        finish(raw, normalize=True, dim=1000)


def _tiny_decoder(tmp_path, tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    out = tmp_path / "decoder"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_decoder_poolings_do_not_depend_on_padding(tmp_path, ip_tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = _tiny_decoder(tmp_path, ip_tokenizer_dir)
    emb = Embedder(model_dir)
    assert emb.info.decoder and emb.pooling == "last-token"
    texts = ["一种电池管理系统", render_view(_patents(1)[0], "title+abstract"), "A sensor"]
    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for pooling in ("last-token", "mean", "weighted-mean"):
        emb.pooling = pooling
        batched = emb.encode(texts, batch_size=3, normalize=False)
        for i, text in enumerate(texts):
            ids = emb.tokenizer(text, return_tensors="pt", truncation=True, max_length=emb.max_length)["input_ids"]
            with torch.no_grad():
                h = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            n = h.shape[0]
            want = {"last-token": h[-1], "mean": h.mean(0),
                    "weighted-mean": (h * torch.arange(1, n + 1).view(-1, 1)).sum(0) / (n * (n + 1) / 2)}[pooling]
            assert np.abs(batched[i] - want.numpy()).max() < 1e-5, (pooling, i)


def test_cli_writes_atomically_with_umask(tmp_path):
    from patentgpt.cli import main

    out = tmp_path / "emb"
    old = os.umask(0o027)
    try:
        rc = main(["embed", "--input", str(CORPUS / "patents_en.jsonl"), "--view", "title", "--dim", "128",
                   "--format", "safetensors", "--out", str(out)])
    finally:
        os.umask(old)
    assert rc == 0
    ids, vecs = read_embeddings(out)
    assert len(ids) == 72 and vecs.shape == (72, 128) and ids[0] == "DEMO-EN-0001"
    assert json.loads((out / "meta.json").read_text())["pooling"] == "mean"
    assert all((p.stat().st_mode & 0o777) == 0o640 for p in out.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]


def test_cli_errors_exit_2_naming_the_key(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "patentgpt.cli", "embed", *a], capture_output=True,
                                    text=True, cwd=REPO, timeout=120)
    proc = run("--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "--input: required" in proc.stderr
    proc = run("--input", str(CORPUS / "patents_en.jsonl"), "--view", "title+clams", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "clams" in proc.stderr
    proc = run("--model", str(tmp_path), "--input", str(CORPUS / "patents_en.jsonl"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "model:" in proc.stderr
