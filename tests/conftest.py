"""Shared fixtures: the demo corpus, a small IP tokenizer trained on it, shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "patentgpt" / "assets" / "demo_corpus"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from patentgpt.train.dist import venv_torch_extensions_dir  # noqa: E402

venv_torch_extensions_dir()  # tests that launch deepspeed (and their ranks) use this venv's op cache


def shared_data_dir() -> Path:
    return Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def demo_corpus() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def ip_tokenizer_dir(tmp_path_factory) -> Path:
    """A 2,000-piece IP tokenizer (SentencePiece BPE + HF directory) trained on the demo corpus."""
    from patentgpt.demo import build_tokenizer

    out = tmp_path_factory.mktemp("ip_tokenizer")
    return build_tokenizer(out, vocab_size=2000)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, ip_tokenizer_dir) -> dict[str, Path]:
    """The demo corpus tokenized into two shard sets: patents and ip_law."""
    from patentgpt.demo import build_shards

    out = tmp_path_factory.mktemp("demo_shards")
    build_shards(out, ip_tokenizer_dir)
    return {"patents": out / "shards" / "patents", "ip_law": out / "shards" / "ip_law"}
