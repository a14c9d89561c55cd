"""``patentgpt tokenizer report``: JSON, markdown and PNG outputs, on .model files and HF dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, shared_data_dir

LLAMA2 = shared_data_dir() / "tokenizers" / "llama2" / "tokenizer.model"
DEMO = REPO / "patentgpt" / "assets" / "demo_corpus"

ZH = ["本发明公开了一种锂离子电池的均衡控制方法。", "一种水电站高压输电线路驱鸟保护装置", "所述控制器根据内阻漂移值设定均衡电流。"]
EN = ["A battery management system monitors the impedance of each cell.",
      "The controller sets a balancing current of up to 150 mA."]


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("texts")
    zh = out / "zh.txt"
    zh.write_text("\n".join(ZH) + "\n", encoding="utf-8")
    en = out / "en.jsonl"
    en.write_text("".join(json.dumps({"title": "Cell balancing", "abstract": t}) + "\n" for t in EN))
    return {"zh": zh, "en": en}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    """A base .model and an HF dir of an IP tokenizer that knows the Chinese above."""
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.hf import save_hf_tokenizer
    from patentgpt.tokenizer.train import train_sentencepiece

    out = tmp_path_factory.mktemp("tok")
    docs = list(read_jsonl([DEMO / "patents_en.jsonl"]))
    base = LLAMA2 if LLAMA2.is_file() else train_sentencepiece(texts=docs, model_prefix=out / "base", vocab_size=400)
    ip = train_sentencepiece(texts=docs + ZH * 20, model_prefix=out / "ip", vocab_size=900, character_coverage=1.0)
    return {"base": Path(base), "ip": save_hf_tokenizer(ip, out / "ip_hf")}


def test_report_outputs(tmp_path, tokenizers, texts, capsys):
    from patentgpt.cli import main

    out = tmp_path / "report"
    args = ["tokenizer", "report", "--tokenizer", f"base={tokenizers['base']}", "--tokenizer", f"ip={tokenizers['ip']}",
            "--text", f"zh={texts['zh']}", "--text", f"en={texts['en']}", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"zh", "en"} and set(report["results"]["zh"]) == {"base", "ip"}
    zh_chars = sum(len(t) for t in ZH)
    for lang, per_tok in report["results"].items():
        for name, r in per_tok.items():
            assert r["chars"] == (zh_chars if lang == "zh" else r["chars"]) and r["tokens"] > 0
            assert r["tokens_per_char"] == pytest.approx(r["tokens"] / r["chars"], abs=1e-5)
            assert r["chars_per_token"] == pytest.approx(r["chars"] / r["tokens"], abs=1e-4)
            assert r["bytes_per_token"] == pytest.approx(r["bytes"] / r["tokens"], abs=1e-4)
            assert 0 <= r["byte_fallback_rate"] <= 1 and r["samples"][0]["pieces"]
    zh = report["results"]["zh"]
    # the base has few Chinese characters: many byte pieces; the IP tokenizer covers them
    assert zh["base"]["byte_fallback_rate"] > 0.2 and zh["ip"]["byte_fallback_rate"] == 0
    assert zh["ip"]["tokens"] < 0.8 * zh["base"]["tokens"]
    assert report["tokenizers"]["ip"]["vocab_size"] == 900
    md = (out / "report.md").read_text()
    assert md.count("\n| ") >= 1 + 4 and "| ip | 900 | zh |" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "report:" in capsys.readouterr().out


def test_report_bad_arguments(tmp_path, tokenizers, texts, capsys):
    from patentgpt.cli import main

    base = ["tokenizer", "report", "--out", str(tmp_path / "r")]
    assert main([*base, "--tokenizer", str(tokenizers["base"]), "--text", f"zh={texts['zh']}"]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err
    assert main([*base, "--tokenizer", f"b={tokenizers['base']}", "--text", f"zh={tmp_path / 'none.txt'}"]) == 2
    assert "file not found" in capsys.readouterr().err
    fake = tmp_path / "fake.model"
    fake.write_bytes(b"\x00\x01 not a model")
    assert main([*base, "--tokenizer", f"b={fake}", "--text", f"zh={texts['zh']}"]) == 2
    assert "not a SentencePiece model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
