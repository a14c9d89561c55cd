"""``patentgpt model extend-vocab`` and the model/tokenizer vocab check.

A tiny random LLaMA whose vocabulary is the base tokenizer (LLaMA-2's from ../shared/data, or the
project's own tiny base) is grown to a merged tokenizer; base-id logits must not move.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, shared_data_dir

LLAMA2 = shared_data_dir() / "tokenizers" / "llama2" / "tokenizer.model"
MISTRAL = shared_data_dir() / "tokenizers" / "mistral" / "tokenizer.model"
DEMO = REPO / "patentgpt" / "assets" / "demo_corpus"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    """base .model, an IP model with symbols, and their merge (HF dir)."""
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.merge import merge_tokenizers
    from patentgpt.tokenizer.symbols import load_symbols
    from patentgpt.tokenizer.train import train_sentencepiece

    out = tmp_path_factory.mktemp("tok")
    texts = list(read_jsonl([DEMO / "patents_en.jsonl"]))
    if (shared_data_dir() / "patents").is_dir():
        texts += list(read_jsonl([shared_data_dir() / "patents/zh/cn_titles_ipc.jsonl"], "title"))[:1500]
    base = LLAMA2 if LLAMA2.is_file() else train_sentencepiece(texts=texts, model_prefix=out / "base", vocab_size=500)
    ip = train_sentencepiece(texts=texts, model_prefix=out / "ip", vocab_size=4000, character_coverage=1.0,
                             user_defined_symbols=load_symbols())
    merge_tokenizers(base, ip, out / "merged")
    return {"base": Path(base), "ip": Path(ip), "merged": out / "merged"}


def _tiny_model(tmp_path: Path, base: Path, tied: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from patentgpt.tokenizer.hf import save_hf_tokenizer
    import sentencepiece as spm

    n = spm.SentencePieceProcessor(model_file=str(base)).get_piece_size()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    if not tied:  # make the head clearly different from the embeddings
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    out = tmp_path / ("tiny_tied" if tied else "tiny")
    model.save_pretrained(out)
    tok = save_hf_tokenizer(base, tmp_path / "base_tok")
    for f in tok.iterdir():
        shutil.copyfile(f, out / f.name)
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_extend_keeps_base_logits_and_inits_from_base_pieces(tmp_path, tokenizers, tied):
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.cli import main
    from patentgpt.tokenizer.hf import load_proto
    from patentgpt.tokenizer.merge import PLACEHOLDER_RE

    model_dir = _tiny_model(tmp_path, tokenizers["base"], tied)
    out = tmp_path / "grown"
    assert main(["model", "extend-vocab", "--model", str(model_dir), "--tokenizer", str(tokenizers["merged"]),
                 "--out", str(out)]) == 0
    before = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    after = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    merged = load_proto(tokenizers["merged"] / "tokenizer.model")
    n_base, n_new = before.config.vocab_size, len(merged.pieces)
    assert after.config.vocab_size == len(tok) == n_new
    assert json.loads((out / "config.json").read_text())["vocab_size"] == n_new
    assert after.get_input_embeddings().weight.shape[0] == after.get_output_embeddings().weight.shape[0] == n_new

    # sequences of base ids only: logits over the base vocabulary are unchanged
    ids = torch.randint(0, n_base, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = before(ids).logits, after(ids).logits
    torch.testing.assert_close(b[..., :n_base], a, atol=1e-5, rtol=0)

    # each new row is the mean of the base rows of the base tokenizer's encoding of its text
    # (the piece's own "▁" is a space; no dummy prefix, as inside running text)
    base_proto = load_proto(tokenizers["base"])
    base_proto.normalizer_spec.add_dummy_prefix = False
    base_sp = spm.SentencePieceProcessor(model_proto=base_proto.SerializeToString())
    emb0, emb1 = before.get_input_embeddings().weight, after.get_input_embeddings().weight
    head0, head1 = before.get_output_embeddings().weight, after.get_output_embeddings().weight
    checked = 0
    for i in range(n_base, n_new):
        piece = merged.pieces[i].piece
        if PLACEHOLDER_RE.match(piece):  # reserved rows: the mean of all base rows
            torch.testing.assert_close(emb1[i], emb0.mean(0), atol=1e-5, rtol=0)
            continue
        src = base_sp.encode(piece.replace("▁", " "))
        assert src and all(t < n_base for t in src)
        torch.testing.assert_close(emb1[i], emb0[src].mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(head1[i], head0[src].mean(0), atol=1e-5, rtol=0)
        checked += 1
    assert checked > 50
    report = json.loads((out / "extend_vocab_report.json").read_text())
    assert report["tied_embeddings"] == tied and report["new_rows"] == n_new - n_base
    assert report["rows_from_base_pieces"] + report["rows_from_mean_embedding"] == n_new - n_base
    # the grown model and its tokenizer generate together
    enc = tok("<|title|>一种电池", return_tensors="pt")
    gen = after.generate(**enc, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 3


def test_refuses_a_tokenizer_that_does_not_extend_the_models(tmp_path, tokenizers, capsys):
    from patentgpt.cli import main
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.merge import merge_tokenizers
    from patentgpt.tokenizer.train import train_sentencepiece

    model_dir = _tiny_model(tmp_path, tokenizers["base"], tied=False)
    if MISTRAL.is_file() and LLAMA2.is_file():
        other = MISTRAL
    else:
        other = train_sentencepiece(texts=list(read_jsonl([DEMO / "patents_en.jsonl"])),
                                    model_prefix=tmp_path / "other", vocab_size=450)
    merge_tokenizers(other, tokenizers["ip"], tmp_path / "other_merged")
    rc = main(["model", "extend-vocab", "--model", str(model_dir), "--tokenizer", str(tmp_path / "other_merged"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "is not an extension of the model's tokenizer" in err and "first at id" in err
    assert not (tmp_path / "o").exists()
    # a model directory without its tokenizer needs --base-tokenizer
    for f in model_dir.glob("tokenizer*"):
        f.unlink()
    rc = main(["model", "extend-vocab", "--model", str(model_dir), "--tokenizer", str(tokenizers["merged"]),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "--base-tokenizer" in capsys.readouterr().err
    rc = main(["model", "extend-vocab", "--model", str(model_dir), "--tokenizer", str(tokenizers["merged"]),
               "--out", str(tmp_path / "o"), "--base-tokenizer", str(tokenizers["base"])])
    assert rc == 0


def test_check_vocab_says_which_side_is_bigger(tmp_path, tokenizers, capsys):
    from patentgpt.cli import main
    from patentgpt.config import ConfigError
    from patentgpt.data.shards import ShardError
    from patentgpt.model.vocab import check_vocab

    check_vocab(32000, 32000)
    check_vocab(32064, 32000)  # padding rows are fine
    with pytest.raises(ConfigError, match="smaller than the tokenizer's 55296 pieces.*extend-vocab"):
        check_vocab(32000, 55296)
    with pytest.raises(ShardError, match="bigger than the tokenizer's 32000 pieces by 23296.*tokenizer saved with"):
        check_vocab(55296, 32000)
    # the CLI check reads config.json only
    model_dir = _tiny_model(tmp_path, tokenizers["base"], tied=True)
    assert main(["model", "check-vocab", "--model", str(model_dir)]) == 0
    assert main(["model", "check-vocab", "--model", str(model_dir), "--tokenizer", str(tokenizers["merged"])]) == 2
    assert "patentgpt model extend-vocab" in capsys.readouterr().err
