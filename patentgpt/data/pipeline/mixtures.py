"""Stage mixtures: select documents per stage entry, tokenize them into one shard set each, and
write ``mixture.yaml`` for the pretraining config.

A stage lists entries ``{source, weight | epochs, lang, min_chars, max_chars}``; each entry
becomes the shard set ``mixtures/<stage>/<name>/`` (the format of :mod:`patentgpt.data.shards`,
documents without BOS/EOS). Tokenization runs on ``num_proc`` processes, each loading the
tokenizer once; batches come back in order, so the shards are byte-identical for any process
count. The source ``synth`` is the synthesized chat data, rendered with the tokenizer's chat
template.

``mixtures/<stage>/mixture.yaml`` names the tokenizer and lists ``{name, path, weight}`` with
paths relative to itself; a pretraining config points at it with ``data.mixture: PATH``.
With ``epochs`` the weights are ``tokens x epochs``, so one pass of the stage sees each source
about that many times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml
from tqdm.auto import tqdm

from patentgpt.data.pipeline.config import MixtureEntry, MixturesConfig
from patentgpt.data.pipeline.docstore import iter_docs, iter_lines
from patentgpt.data.pipeline.parallel import chunked, ordered_map
from patentgpt.data.shards import ShardWriter, TokenizerInfo
from patentgpt.io import atomic_write_text

_TOKENIZER = None


def init_tokenizer(path: str) -> None:
    global _TOKENIZER
    from transformers import AutoTokenizer

    _TOKENIZER = AutoTokenizer.from_pretrained(path)


def render_messages(messages: list[dict], tokenizer=None) -> str:
    """Chat messages as training text: the tokenizer's chat template, or ``role: content`` lines."""
    tok = tokenizer if tokenizer is not None else _TOKENIZER
    if tok is not None and getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def tokenize_chunk(items: list[tuple[str, str | list]]) -> list[np.ndarray]:
    """Token ids of ``(kind, payload)`` items: kind ``text`` (a string) or ``chat`` (messages)."""
    texts = [payload if kind == "text" else render_messages(payload) for kind, payload in items]
    ids = _TOKENIZER(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(x, dtype=np.int64) for x in ids]

def select(docs_file: Path, entry: MixtureEntry) -> Iterator[tuple[dict, tuple[str, str]]]:
    """Documents of one entry (by source, language and length), with what to tokenize."""
    wanted = set(entry.source_names) - {"synth"}
    if not wanted:
        return
    for doc in iter_docs(docs_file):
        if doc["source"] not in wanted:
            continue
        if entry.lang is not None and doc["lang"] not in entry.lang:
            continue
        n = len(doc["text"])
        if n < entry.min_chars or (entry.max_chars is not None and n > entry.max_chars):
            continue
        yield {"source": doc["source"], "lang": doc["lang"]}, ("text", doc["text"])


def select_synth(synth_file: Path | None, entry: MixtureEntry) -> Iterator[tuple[dict, tuple[str, list]]]:
    if "synth" not in entry.source_names or synth_file is None or not synth_file.is_file():
        return
    for line in iter_lines(synth_file):
        row = json.loads(line)
        if entry.lang is not None and row.get("lang") not in entry.lang:
            continue
        yield {"source": "synth", "lang": row.get("lang", "other")}, ("chat", row["messages"])


def build_entry(entry: MixtureEntry, items: Iterator, out_dir: Path, info: TokenizerInfo, cfg: MixturesConfig,
                tokenizer_dir: str, num_proc: int, desc: str) -> dict:
    """Tokenize one entry's documents into the shard set ``out_dir``; per-language/source counts."""
    by_lang: dict = {}
    by_source: dict = {}
    meta_rows: list[dict] = []

    def payloads():
        for meta, payload in items:
            meta_rows.append(meta)
            yield payload

    bar = tqdm(desc=desc, unit="doc", leave=False)
    i = 0
    with ShardWriter(out_dir, info, shard_max_tokens=cfg.shard_max_tokens,
                     extra_meta={"entry": entry.model_dump()}) as writer:
        for ids_list in ordered_map(tokenize_chunk, chunked(payloads(), cfg.batch_size), num_proc=num_proc,
                                    init=init_tokenizer, init_args=(tokenizer_dir,)):
            for ids in ids_list:
                m = meta_rows[i]
                meta_rows[i] = None  # release
                i += 1
                writer.add(ids)
                for table, key in ((by_lang, m["lang"]), (by_source, m["source"])):
                    row = table.setdefault(key, {"docs": 0, "tokens": 0})
                    row["docs"] += 1
                    row["tokens"] += int(len(ids))
            bar.update(len(ids_list))
        meta = writer.close()
    bar.close()
    return {"docs": meta["num_docs"], "tokens": meta["num_tokens"], "by_lang": by_lang, "by_source": by_source,
            "content_sha256": meta["content_sha256"]}


def write_mixture_yaml(stage_dir: Path, stage: str, tokenizer_dir: str, entries: list[MixtureEntry],
                       built: dict[str, dict], description: str = "") -> dict:
    """``mixture.yaml`` of one stage; returns its content."""
    rows = []
    epochs_mode = any(e.epochs is not None for e in entries)
    for e in entries:
        stats = built[e.set_name]
        if stats["docs"] == 0:
            continue  # an empty shard set cannot be sampled; the card reports it
        weight = float(stats["tokens"] * e.epochs) if epochs_mode else float(e.weight)
        rows.append({"name": e.set_name, "path": e.set_name, "weight": weight})
    doc = {
        "stage": stage,
        "description": description,
        "tokenizer": str(Path(tokenizer_dir).resolve()),
        "sources": rows,
        "stats": {name: {k: v for k, v in s.items() if k in ("docs", "tokens")} for name, s in built.items()},
    }
    if epochs_mode:
        doc["planned_tokens"] = int(sum(built[e.set_name]["tokens"] * e.epochs for e in entries))
    header = ("# Written by `patentgpt data run`. Point a pretraining config at this file:\n"
              "#   data: {mixture: <this file>, seq_len: ...}\n"
              "# Shard paths are relative to this file; weights are sampling weights of the mixture loader.\n")
    atomic_write_text(stage_dir / "mixture.yaml", header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return doc
