"""JSONL records -> token shards, counting and setting aside every record it cannot use."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from patentgpt.data.jsonl import iter_jsonl
from patentgpt.data.render import DEFAULT_TEMPLATE, render_record
from patentgpt.data.shards import ShardWriter, TokenizerInfo
from patentgpt.io import atomic_open

BATCH = 256


def read_jsonl(paths: Iterable[str | os.PathLike], text_field: str = "text",
               rejects: list | None = None, template=DEFAULT_TEMPLATE) -> Iterator[str]:
    """Yield rendered text (:func:`~patentgpt.data.render.render_record`) of each usable record;
    append (path, line, reason) for the others (reasons of :func:`~patentgpt.data.jsonl.iter_jsonl`,
    and ``no_text``)."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        for lineno, record, reason in iter_jsonl(path):
            if reason is None:
                text = render_record(record, template, text_field=text_field)
                if text.strip():
                    yield text
                    continue
                reason = "no_text"
            if rejects is not None:
                rejects.append((str(path), lineno, reason))


def tokenize_texts(texts: Iterable[str], tokenizer, writer: ShardWriter, total: int | None = None) -> None:
    batch: list[str] = []
    bar = tqdm(total=total, desc="tokenize", unit="doc")
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH:
            writer.add_many(tokenizer(batch, add_special_tokens=False)["input_ids"])
            bar.update(len(batch))
            batch = []
    if batch:
        writer.add_many(tokenizer(batch, add_special_tokens=False)["input_ids"])
        bar.update(len(batch))
    bar.close()


def tokenize_jsonl(inputs: list[str], tokenizer_dir: str, out_dir: str, *, text_field: str = "text",
                   overwrite: bool = False) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    info = TokenizerInfo.from_tokenizer(tokenizer, name=Path(tokenizer_dir).name)
    rejects: list = []
    with ShardWriter(out_dir, info, overwrite=overwrite,
                     extra_meta={"sources": [str(p) for p in inputs]}) as writer:
        tokenize_texts(read_jsonl(inputs, text_field, rejects), tokenizer, writer)
        meta = writer.close()
    rejects_file = Path(str(out_dir) + ".rejects.jsonl")
    with atomic_open(rejects_file) as fh:
        for path, lineno, reason in rejects:
            fh.write(json.dumps({"source": path, "line": lineno, "reason": reason}) + "\n")
    return {
        "num_docs": writer.num_docs,
        "num_tokens": writer.num_tokens,
        "rejected": len(rejects),
        "reject_reasons": dict(Counter(r[2] for r in rejects)),
        "rejects_file": str(rejects_file),
        "meta": meta,
    }
