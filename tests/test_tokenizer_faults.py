"""Tokenizer and vocabulary faults (issue #16): Chinese coverage with a required character set,
`tokenizer report` measuring text as given, `model check-vocab` comparing identity, a missing
.model file, and the README's commands naming files that exist."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, shared_data_dir
from patentgpt.data.jsonl import iter_jsonl

LLAMA2 = shared_data_dir() / "tokenizers" / "llama2" / "tokenizer.model"
MISTRAL = shared_data_dir() / "tokenizers" / "mistral" / "tokenizer.model"
ZH_TITLES = shared_data_dir() / "patents" / "zh" / "cn_titles_ipc.jsonl"
DEMO = REPO / "patentgpt" / "assets" / "demo_corpus"


def _texts(path: Path, field: str, n: int) -> list[str]:
    return [r[field] for _, r, _ in iter_jsonl(path) if r and isinstance(r.get(field), str)][:n]


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """(base .model, IP .model trained on little Chinese, held-out Chinese text): the coverage fault."""
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.train import train_sentencepiece

    out = tmp_path_factory.mktemp("cov")
    if LLAMA2.is_file() and ZH_TITLES.is_file():
        titles = _texts(ZH_TITLES, "title", 8000)
        base, train, held = LLAMA2, titles[:1500], titles[6000:]
    else:  # no shared data: a tiny English base; Chinese demo abstracts to train, other titles held out
        base = train_sentencepiece(texts=list(read_jsonl([DEMO / "patents_en.jsonl"])), model_prefix=out / "base",
                                   vocab_size=600)
        train = _texts(DEMO / "patents_zh.jsonl", "abstract", 30)
        held = _texts(DEMO / "patents_zh.jsonl", "title", 100)[30:]
    ip = train_sentencepiece(texts=train, model_prefix=out / "ip", vocab_size=1500, character_coverage=0.98)
    return Path(base), Path(ip), held


def _byte_rate(sp, texts: list[str]) -> float:
    ids = [i for seq in sp.encode(texts) for i in seq]
    return sum(sp.is_byte(i) for i in ids) / len(ids)


def test_required_chars_are_single_pieces_within_budget(tmp_path, small_models):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from patentgpt.tokenizer.charset import required_char_set
    from patentgpt.tokenizer.hf import load_proto
    from patentgpt.tokenizer.merge import merge_tokenizers

    base, ip, held = small_models
    level1 = required_char_set("gb2312-1")
    assert len(level1) == 3755 and len(set(level1)) == 3755
    base_pieces = {p.piece for p in load_proto(base).pieces}
    missing = sum(c not in base_pieces for c in level1)
    size = len(base_pieces) + missing + 32  # tight: the IP model's pieces must make room
    plain = merge_tokenizers(base, ip, tmp_path / "plain", vocab_size=size)
    cov = merge_tokenizers(base, ip, tmp_path / "cov", vocab_size=size, required_chars=["gb2312-1"])
    req = cov["required_chars"]
    assert req["chars"] == 3755 and req["single_piece"] == 3755 and req["missing_examples"] == ""
    assert cov["vocab_size"] == plain["vocab_size"] == size and cov["required_chars_added"] > 500
    assert cov["trimmed"] > 0 and plain["trimmed"] == 0 and plain["padded"] > 0  # IP pieces gave way
    assert plain["required_chars"] is None
    sp_plain = spm.SentencePieceProcessor(model_file=str(tmp_path / "plain" / "tokenizer.model"))
    sp_cov = spm.SentencePieceProcessor(model_file=str(tmp_path / "cov" / "tokenizer.model"))
    in_level1 = [t for t in held if all(c in level1 or c in base_pieces or c == " " for c in t)]
    assert len(in_level1) > len(held) / 2
    assert _byte_rate(sp_plain, held) > 0.01  # the fault: held-out Chinese falls back to bytes
    assert _byte_rate(sp_cov, in_level1) == 0 and _byte_rate(sp_cov, held) < _byte_rate(sp_plain, held) / 3
    hf = AutoTokenizer.from_pretrained(tmp_path / "cov")  # the HF export agrees with SentencePiece
    assert hf(held[:300], add_special_tokens=False)["input_ids"] == sp_cov.encode(held[:300])


def test_required_chars_beyond_the_budget_or_unknown_are_config_errors(tmp_path, small_models):
    from patentgpt.config import ConfigError
    from patentgpt.tokenizer.hf import load_proto
    from patentgpt.tokenizer.merge import merge_tokenizers

    base, ip, _ = small_models
    size = len(load_proto(base).pieces) + 64
    with pytest.raises(ConfigError, match="required characters missing from the base"):
        merge_tokenizers(base, ip, tmp_path / "x", vocab_size=size, required_chars="gb2312-1")
    from patentgpt.tokenizer.charset import required_char_set

    assert [len(required_char_set(n)) for n in ("gb2312-2", "gb2312-symbols", "gb2312", "big5-1")] == [
        3008, 682, 7445, 5401]  # the published sizes of these standards
    with pytest.raises(ConfigError, match="neither a named set"):
        merge_tokenizers(base, ip, tmp_path / "x", vocab_size=size, required_chars="gb-2312")
    assert not (tmp_path / "x").exists()


def test_report_measures_jsonl_as_given_and_plots_a_panel_per_language(tmp_path, small_models):
    from patentgpt.tokenizer.report import _plot, tokenizer_report

    base, ip, _ = small_models
    records = [r for _, r, _ in iter_jsonl(DEMO / "patents_en.jsonl")][:10]
    en = tmp_path / "en.jsonl"
    en.write_text("".join(json.dumps(r) + "\n" for r in records))
    zh = tmp_path / "zh.txt"
    zh.write_text("\n".join(_texts(DEMO / "patents_zh.jsonl", "abstract", 10)) + "\n", encoding="utf-8")
    report = tokenizer_report({"base": base, "ip": ip}, {"en": en, "zh": zh}, tmp_path / "rep")
    sections = ("title", "abstract", "claims", "description", "ipc")
    given = sum(len("\n".join(r[s] if isinstance(r[s], str) else "; ".join(r[s]) if s == "ipc" else "\n".join(r[s])
                              for s in sections if r.get(s))) for r in records)
    assert report["results"]["en"]["base"]["chars"] == given  # markers added for training are not counted
    assert "no section markers" in report["rendering"]
    assert not any("<|" in s["text"] for s in report["results"]["en"]["base"]["samples"])
    titles = _plot(report, tmp_path / "p.png")
    assert len(titles) == 4 and {t.split(":")[0] for t in titles} == {"en", "zh"}


def _model_dir(path: Path, vocab: int, tokenizer: Path | None) -> Path:
    from transformers import AutoTokenizer, LlamaConfig

    LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(path)
    if tokenizer is not None:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(path)
    return path


def test_check_vocab_compares_identity_not_size(tmp_path, ip_tokenizer_dir, small_models, capsys):
    from patentgpt.cli import main
    from patentgpt.tokenizer.hf import save_hf_tokenizer
    from patentgpt.tokenizer.train import train_sentencepiece
    from patentgpt.data.tokenize import read_jsonl

    # a same-sized impostor: 2,000 pieces trained on other text (LLaMA-2 vs Mistral, in small)
    other = train_sentencepiece(texts=list(read_jsonl([DEMO / "ip_law.jsonl", DEMO / "patents_zh.jsonl"])),
                                model_prefix=tmp_path / "other", vocab_size=2000)
    other_hf = save_hf_tokenizer(other, tmp_path / "other_hf")
    model = _model_dir(tmp_path / "model", 2048, ip_tokenizer_dir)
    assert main(["model", "check-vocab", "--model", str(model)]) == 0
    assert "identity: same pieces" in capsys.readouterr().out
    assert main(["model", "check-vocab", "--model", str(model), "--tokenizer", str(other_hf)]) == 2
    assert "is not the tokenizer saved with" in capsys.readouterr().err
    own_model_file = next(Path(ip_tokenizer_dir).parent.glob("*.model"))  # the same tokenizer as a .model file
    assert main(["model", "check-vocab", "--model", str(model), "--tokenizer", str(own_model_file)]) == 0
    assert main(["model", "check-vocab", "--model", str(model), "--tokenizer", str(other)]) == 2
    assert "fingerprint" in capsys.readouterr().err
    # the model directory holds the wrong tokenizer: the message must not suggest that same one
    wrong = _model_dir(tmp_path / "grown", 4096, ip_tokenizer_dir)
    assert main(["model", "check-vocab", "--model", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "holds the wrong tokenizer" in err and "from_pretrained" not in err
    assert main(["model", "check-vocab", "--model", str(model), "--tokenizer", str(tmp_path / "no.model")]) == 2
    assert "not found" in capsys.readouterr().err


def test_llama2_model_with_mistral_tokenizer_fails(tmp_path, shared_data, capsys):
    from patentgpt.cli import main
    from patentgpt.tokenizer.hf import save_hf_tokenizer

    model = _model_dir(tmp_path / "llama2_sized", 32000, save_hf_tokenizer(LLAMA2, tmp_path / "llama2_hf"))
    assert main(["model", "check-vocab", "--model", str(model), "--tokenizer", str(MISTRAL)]) == 2
    assert "Equal sizes are not enough" in capsys.readouterr().err
    assert main(["model", "check-vocab", "--model", str(model), "--tokenizer", str(LLAMA2)]) == 0


def test_missing_model_file_is_reported_as_missing(tmp_path):
    from patentgpt.config import ConfigError
    from patentgpt.tokenizer.hf import load_proto

    with pytest.raises(ConfigError, match="file not found"):
        load_proto(tmp_path / "llama2" / "tokenizer.model")


def test_readme_commands_parse_and_name_existing_inputs(shared_data):
    from patentgpt.cli import build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    commands = [c.strip() for b in blocks for c in b.replace("\\\n", " ").splitlines()
                if c.strip().startswith("patentgpt ")]
    assert any(" tokenizer merge " in c for c in commands)
    parser = build_parser()
    for cmd in commands:
        argv = shlex.split(cmd.split("#")[0])[1:]
        parser.parse_args(argv)  # SystemExit on an unknown option
        for arg in argv:
            for path in re.findall(r"(?:^|=)((?:\.\./shared/data|configs)/\S+)", arg):
                resolved = shared_data / path.removeprefix("../shared/data/") if path.startswith("..") else REPO / path
                assert resolved.exists(), f"{cmd}: {path} does not exist"
