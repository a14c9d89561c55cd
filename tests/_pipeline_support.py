"""Helpers shared by the corpus-pipeline tests: the fixture config and a small tokenizer."""

from __future__ import annotations

from pathlib import Path

from patentgpt.config import load_config
from patentgpt.data.pipeline.config import DataPipelineConfig

FIX = Path(__file__).resolve().parent / "fixtures" / "pipeline"
REPO = Path(__file__).resolve().parents[1]

# What tests/fixtures/pipeline/patents_en.jsonl plants (line numbers are the file's):
PLANTED_BAD = {
    5: "malformed_json",
    6: "not_an_object",
    7: "missing_field",
    8: "undecodable_utf8",
    10: "wrong_type",  # title is a number
    11: "wrong_type",  # claims is an object
}
EXACT_DUP = ("FX-EN-900", "FX-EN-001")  # (duplicate, survivor): case, spaces and punctuation differ
NEAR_DUP_EN = ("FX-EN-901", "FX-EN-002")  # one word of the abstract changed
NEAR_DUP_ZH = ("FX-ZH-901", "FX-ZH-001")  # one character added


def fixture_data(out_dir: Path, *, tokenizer: str | None = None, steps: list[str] | None = None,
                 num_proc: int = 1, **top) -> dict:
    """A pipeline config (as a dict) over the test fixtures."""
    data = {
        "name": "fixtures",
        "output_dir": str(out_dir),
        "input_root": str(FIX),
        "num_proc": num_proc,
        "seed": 7,
        "sources": [
            {"name": "patents_en", "paths": ["patents_en.jsonl", "empty.jsonl"], "lang": "en",
             "template": {"sections": ["title", "abstract", "claims", "ipc"]}},
            {"name": "patents_zh", "paths": "patents_zh.jsonl", "lang": "zh",
             "template": {"sections": ["title", "abstract", "claims", "ipc"], "headings": "auto"}},
            {"name": "ip_law", "paths": "ip_law.jsonl", "kind": "text", "priority": 1},
            {"name": "csv_patents", "paths": "patents.csv", "lang": "en",
             "fields": {"id": "pub_no", "title": "title_text", "abstract": "abstract_text",
                        "claims": "claims_text", "ipc": "ipc_codes", "date": "pub_date"}},
        ],
        "mixtures": {
            "tokenizer": tokenizer or "unused",
            "stages": {
                "stage1": {"sources": [{"source": "patents_en", "weight": 3.0},
                                       {"source": "patents_zh", "weight": 2.0},
                                       {"source": "ip_law", "weight": 1.0}]},
                "stage2": {"sources": [{"source": ["patents_en", "patents_zh", "csv_patents"], "name": "patents",
                                        "epochs": 1},
                                       {"source": "ip_law", "epochs": 2}]},
            },
        },
    }
    data["steps"] = steps or (["ingest", "clean", "lang", "filter", "dedup", "rewrite", "synth", "mixtures", "card"]
                              if tokenizer else ["ingest", "clean", "lang", "filter", "dedup"])
    data.update(top)
    return data


def fixture_config(out_dir: Path, overrides: list[str] = (), **kw) -> DataPipelineConfig:
    return load_config(DataPipelineConfig, data=fixture_data(out_dir, **kw), overrides=overrides)


def build_small_tokenizer(out: Path) -> Path:
    """A 2,500-piece SentencePiece BPE tokenizer (HF directory) trained on the demo corpus."""
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.hf import save_hf_tokenizer
    from patentgpt.tokenizer.symbols import load_symbols
    from patentgpt.tokenizer.train import train_sentencepiece

    corpus = REPO / "patentgpt" / "assets" / "demo_corpus"
    texts = list(read_jsonl(sorted(corpus.glob("*.jsonl"))))
    model = train_sentencepiece(texts=texts, model_prefix=out / "sp" / "small", vocab_size=2500,
                                character_coverage=0.99, user_defined_symbols=load_symbols())
    return save_hf_tokenizer(model, out / "tokenizer")
