"""IP tokenizer: training from a config, merging into a base vocabulary, HF export, bad input.

The base is LLaMA-2's tokenizer.model from ../shared/data when present, otherwise a small base
trained here on the demo corpus; the IP model is trained here through the config pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, shared_data_dir

LLAMA2 = shared_data_dir() / "tokenizers" / "llama2" / "tokenizer.model"
CHINESE_SP = shared_data_dir() / "tokenizers" / "chinese-llama" / "chinese_sp.model"
PATENTS = shared_data_dir() / "patents"
DEMO = REPO / "patentgpt" / "assets" / "demo_corpus"

# Text kinds that must survive encode -> decode unchanged. The one normalization that prevents a
# round trip is SentencePiece's whitespace escaping: a literal U+2581 "▁" in the input decodes as
# a space (tested below). Everything else (tabs, runs of spaces, newlines, leading/trailing
# whitespace, characters outside the vocabulary via byte fallback) comes back exactly.
ROUND_TRIP = {
    "english": "A battery management system monitors the impedance of each series-connected cell.",
    "chinese": "本发明公开了一种锂离子电池的均衡控制方法，所述方法包括：检测每个电芯的内阻漂移值；龘靐齉。",
    "mixed": "该装置包括a microcontroller (MCU) 和 3.3 V 电源，IPC: H01M 10/0525 (2010.01)。",
    "code": "def forward(self, x):\n\tif x is None:\n\t\treturn {'k': [1, 2]}  # 注释\n    return x ** 2\n",
    "formula": "E = mc^2; ∑_{i=1}^{n} x_i² ≤ 10⁻³ μm, α+β→γ, H₂O, 25 °C ± 0.5%, ∫₀^∞ e^{-x} dx = 1 😀",
    "whitespace": "  leading spaces,\tand tabs\t\t, runs     of spaces\n\n\nblank lines \r\n trailing   ",
    "claims": "<|claims|><|claim|>1. A method comprising: forming a gate;\n<|dependent_claim|>2. The method of claim 1.",
}


def _train_ip(out: Path, vocab_size: int, extra: list[str] = ()) -> Path:
    from patentgpt.config import load_config
    from patentgpt.tokenizer.config import TokenizerTrainConfig, train_from_config

    if PATENTS.is_dir():
        inputs = ("[{path: %s, text_field: title, weight: 3, max_records: 2500}, {path: %s, weight: 3}, "
                  "{path: %s, max_records: 800}, {path: %s}]" % (
                      PATENTS / "zh/cn_titles_ipc.jsonl", PATENTS / "zh/cn_claim_sentences.jsonl",
                      PATENTS / "en/patentsview_abstracts.jsonl", DEMO / "patents_en.jsonl"))
    else:
        inputs = "[{path: %s}]" % (DEMO / "patents_en.jsonl")
    cfg = load_config(TokenizerTrainConfig, REPO / "configs/tokenizer/demo.yaml",
                      [f"output_dir={out}", f"vocab_size={vocab_size}", f"inputs={inputs}", *extra])
    report = train_from_config(cfg)
    return Path(report["model"])


def _base_model(tmp_path_factory) -> Path:
    """LLaMA-2's model, or the project's own tiny base (600 pieces, no symbols) without shared data."""
    if LLAMA2.is_file():
        return LLAMA2
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.train import train_sentencepiece

    out = tmp_path_factory.mktemp("tiny_base")
    return train_sentencepiece(texts=list(read_jsonl([DEMO / "patents_en.jsonl"])), model_prefix=out / "base",
                               vocab_size=600)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return _base_model(tmp_path_factory)


@pytest.fixture(scope="module")
def ip_model(tmp_path_factory) -> Path:
    return _train_ip(tmp_path_factory.mktemp("ip") / "ip", 3000 if PATENTS.is_dir() else 1500)


@pytest.fixture(scope="module")
def merged(tmp_path_factory, base_model, ip_model) -> Path:
    """Merged through the CLI, as a user runs it (default: round up to a multiple of 64)."""
    from patentgpt.cli import main

    out = tmp_path_factory.mktemp("merged") / "tok"
    assert main(["tokenizer", "merge", "--base", str(base_model), "--add", str(ip_model), "--out", str(out)]) == 0
    return out


def _sample_texts() -> list[str]:
    """A few hundred lines of real patent text (shared data) or of the demo corpus."""
    from patentgpt.data.tokenize import read_jsonl

    if PATENTS.is_dir():
        texts = []
        for name, n in [("zh/cn_titles_ipc.jsonl", 120), ("zh/cn_claim_sentences.jsonl", 60),
                        ("zh/cn_cpc_abstracts.jsonl", 20), ("en/patentsview_abstracts.jsonl", 80),
                        ("en/uspto_fulltext.jsonl", 3), ("en/historical_us_ocr.jsonl", 5)]:
            texts += list(read_jsonl([PATENTS / name]))[-n:]  # the tail: not in the IP training records
    else:
        texts = list(read_jsonl([DEMO / "patents_en.jsonl"]))
    lines = [ln for t in texts for ln in t.splitlines() if ln.strip()]
    return (texts + lines)[:600]


def test_train_config_reports_time_memory_and_samples(tmp_path):
    from patentgpt.config import load_config
    from patentgpt.tokenizer.config import Reservoir, TokenizerTrainConfig, train_from_config

    cfg = load_config(TokenizerTrainConfig, REPO / "configs/tokenizer/demo.yaml",
                      [f"output_dir={tmp_path / 'demo'}", "vocab_size=2500", "input_sentence_size=300"])
    report = train_from_config(cfg)
    assert report["sentences_seen"] > 300 and report["sentences_sampled"] == 300
    assert report["seconds"]["total"] > 0 and report["peak_rss_mb"] > 0
    assert (tmp_path / "demo/demo.model").is_file() and (tmp_path / "demo/hf/tokenizer.json").is_file()
    assert json.loads((tmp_path / "demo/train_report.json").read_text())["vocab_size"] == report["vocab_size"]
    # a token-shard directory as input: the text of the JSONL files it was made from
    from patentgpt.data.tokenize import tokenize_jsonl

    shards = tmp_path / "shards"
    made = tokenize_jsonl([str(DEMO / "patents_en.jsonl")], str(tmp_path / "demo/hf"), str(shards))
    cfg2 = load_config(TokenizerTrainConfig, data={"output_dir": str(tmp_path / "from_shards"), "vocab_size": 500,
                                                   "inputs": [{"path": str(shards)}]})
    report2 = train_from_config(cfg2)
    assert report2["documents"] == made["num_docs"] and report2["sources"][0]["path"].endswith("patents_en.jsonl")
    # the sample is uniform: every position of a long stream is equally likely to be kept
    counts = [0] * 10
    for seed in range(400):
        r = Reservoir(5, seed)
        for i in range(100):
            r.add(str(i))
        for item in r.items:
            counts[int(item) // 10] += 1
    assert min(counts) > 0.7 * max(counts)


def test_base_pieces_keep_ids_and_scores(base_model, ip_model, merged):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from patentgpt.tokenizer.hf import NORMAL, load_proto

    base, merge, add = load_proto(base_model), load_proto(merged / "tokenizer.model"), load_proto(ip_model)
    n = len(base.pieces)
    assert len(merge.pieces) % 64 == 0 and len(merge.pieces) > n
    for a, b in zip(base.pieces, merge.pieces):
        assert (a.piece, a.type, a.score) == (b.piece, b.type, b.score)
    report = json.loads((merged / "merge_report.json").read_text())
    appended = merge.pieces[n:n + report["appended"]]
    scores = [p.score for p in appended]
    assert max(scores) < min(p.score for p in base.pieces if p.type == NORMAL)
    assert all(x > y for x, y in zip(scores, scores[1:]))  # distinct, strictly decreasing
    base_set = {p.piece for p in base.pieces}
    order = [p.piece for p in add.pieces if p.piece not in base_set]
    kept = [p.piece for p in appended]
    assert kept == [p for p in order if p in set(kept)]  # the added model's order
    assert report["base_ids_preserved"] and report["unreachable_appended"] == 0
    # the HF directory gives every base piece its base id
    vocab = AutoTokenizer.from_pretrained(merged).get_vocab()
    assert all(vocab[p.piece] == i for i, p in enumerate(base.pieces))
    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    assert sp.get_piece_size() == len(merge.pieces) == report["vocab_size"]


def test_english_segmentation_change_is_reported(merged):
    eng = json.loads((merged / "merge_report.json").read_text())["english_segmentation"]
    assert eng["words"] > 100 and 0 <= eng["words_changed_fraction"] <= 1
    # appended pieces score below every base piece, so base merges all run first: a changed word
    # is only ever joined further, never split differently, and never gets longer
    assert eng["unique_words_resplit"] == 0
    assert eng["merged_tokens"] <= eng["base_tokens"]


@pytest.mark.parametrize("kind", sorted(ROUND_TRIP))
def test_round_trip(merged, kind):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    text = ROUND_TRIP[kind]
    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(merged)
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    hf_ids = tok(text, add_special_tokens=False)["input_ids"]
    assert hf_ids == ids
    assert tok.decode(hf_ids) == text


def test_whitespace_escape_is_the_one_normalization(merged):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    assert sp.decode(sp.encode("a▁b")) == "a b"


def test_hf_encodes_like_sentencepiece_on_real_text(merged):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(merged)
    texts = _sample_texts()
    words = sorted({w for t in texts for w in t.split()})[:3000]  # short segments: symbols + one word
    assert len(texts) >= 300
    diff = [t for t in texts + words if sp.encode(t) != tok(t, add_special_tokens=False)["input_ids"]]
    assert diff == []
    assert tok("x")["input_ids"][0] == sp.bos_id()  # BOS added as LLaMA does
    chat = tok.apply_chat_template([{"role": "user", "content": "什么是专利？"}], tokenize=False)
    assert "<|im_start|>user" in chat


def test_trim_to_requested_size_keeps_highest_priority(base_model, ip_model):
    from patentgpt.tokenizer.hf import USER_DEFINED, load_proto
    from patentgpt.tokenizer.merge import merge_protos, missing_char_pieces

    n = len(load_proto(base_model).pieces)
    full, _ = merge_protos(base_model, ip_model, vocab_size=0, prune_unreachable=True)
    order = {p.piece: i for i, p in enumerate(full.pieces)}
    small, stats = merge_protos(base_model, ip_model, vocab_size=n + 300)
    kept = [p.piece for p in small.pieces[n:]]
    assert len(small.pieces) == n + 300 and stats.trimmed > 0 and stats.padded == 0
    assert [order[p] for p in kept] == sorted(order[p] for p in kept)  # the added model's order
    symbols = [p.piece for p in full.pieces[n:] if p.type == USER_DEFINED]
    assert symbols and kept[:len(symbols)] == symbols  # symbols come first and stay
    longer = [p.piece for p in full.pieces[n:] if len(p.piece) > 1]
    assert set(longer[:100]) <= set(kept)  # highest-priority pieces kept...
    assert missing_char_pieces(small, range(n, len(small.pieces))) == []  # ...with the characters they need
    padded, stats = merge_protos(base_model, ip_model, vocab_size=len(full.pieces) + 70)
    assert stats.padded == 70 and padded.pieces[-1].piece.startswith("<|reserved_")


@pytest.mark.shared_data
def test_chinese_llama_merge_reproduces_49953(shared_data, tmp_path):
    from patentgpt.cli import main

    out = tmp_path / "chinese_llama"
    assert main(["tokenizer", "merge", "--base", str(LLAMA2), "--add", str(CHINESE_SP), "--out", str(out),
                 "--vocab-size", "none"]) == 0
    report = json.loads((out / "merge_report.json").read_text())
    assert report["vocab_size"] == 49953 and report["padded"] == 0 and report["pruned_unreachable"] == 0
    assert report["added_model_type"] == "unigram"


def test_bad_base_is_not_a_sentencepiece_model(tmp_path, ip_model, capsys):
    from patentgpt.cli import main

    fake = tmp_path / "tokenizer.model"
    fake.write_text("this is not a model\n" * 20)
    assert main(["tokenizer", "merge", "--base", str(fake), "--add", str(ip_model), "--out", str(tmp_path / "o")]) == 2
    assert "is not a SentencePiece model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_vocab_size_smaller_than_base(tmp_path, base_model, ip_model, capsys):
    from patentgpt.cli import main
    from patentgpt.tokenizer.hf import load_proto

    n = len(load_proto(base_model).pieces)
    rc = main(["tokenizer", "merge", "--base", str(base_model), "--add", str(ip_model), "--out", str(tmp_path / "o"),
               "--vocab-size", str(n - 1)])
    assert rc == 2 and f"smaller than the base vocabulary ({n} pieces" in capsys.readouterr().err


def test_non_bpe_base_is_refused(tmp_path, ip_model):
    from patentgpt.config import ConfigError
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.merge import merge_protos
    from patentgpt.tokenizer.train import train_sentencepiece

    unigram = train_sentencepiece(texts=list(read_jsonl([DEMO / "patents_en.jsonl"])), model_prefix=tmp_path / "uni",
                                  vocab_size=400, model_type="unigram")
    with pytest.raises(ConfigError, match="unigram SentencePiece model.*needs a BPE base"):
        merge_protos(unigram, ip_model)


def test_empty_corpus_is_refused(tmp_path):
    from patentgpt.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n{\"text\": \"   \"}\n")
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'out'}\ninputs: [{{path: {empty}}}]\nvocab_size: 300\n")
    assert main(["tokenizer", "train", "--config", str(cfg)]) == 2
    assert not (tmp_path / "out").exists()
    from patentgpt.config import load_config
    from patentgpt.tokenizer.config import TokenizerTrainConfig, train_from_config

    with pytest.raises(Exception, match="corpus is empty"):
        train_from_config(load_config(TokenizerTrainConfig, cfg))
    with pytest.raises(Exception, match="unknown key"):
        load_config(TokenizerTrainConfig, cfg, ["vocab_sise=3"])
