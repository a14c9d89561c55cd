"""Stage mixtures: select documents per stage entry, tokenize them into one shard set each, and
write ``mixture.yaml`` for the pretraining config.

A stage lists entries ``{source, weight | epochs, lang, min_chars, max_chars}``; each entry
becomes the shard set ``mixtures/<stage>/<name>/`` (the format of :mod:`patentgpt.data.shards`,
documents without BOS/EOS). Tokenization runs on ``num_proc`` processes, each loading the
tokenizer once; batches come back in order, so the shards are byte-identical for any process
count. The source ``synth`` is the synthesized chat data, rendered with the tokenizer's chat
template.

An entry with ``length_buckets: [{min_tokens: 4096, weight: 4}, ...]`` is written as one shard set
per length bucket, ``<name>/len<min_tokens>/`` (documents below the first bucket go to ``len0``
with weight 1 unless a bucket starts at 0), and each bucket's mixture weight is scaled so that a
token of that bucket is sampled ``weight`` times as often as a token of ``len0``: with ``weight``
the entry keeps its share of the mixture, with ``epochs`` a bucket is seen ``epochs x weight``
times. A bucket of weight 0 sets its documents aside. Documents an entry does not take (language,
``min_chars``/``max_chars``, a weight-0 bucket) are counted by reason in the stats (``set_aside``).

``mixtures/<stage>/mixture.yaml`` names the tokenizer and lists ``{name, path, weight}`` with
paths relative to itself; a pretraining config points at it with ``data.mixture: PATH``.
With ``epochs`` the weights are ``tokens x epochs``, so one pass of the stage sees each source
about that many times.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
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

def select(docs_file: Path, entry: MixtureEntry) -> Iterator[tuple[dict, tuple[str, str] | None]]:
    """Documents of one entry (by source, language and length), with what to tokenize; a document
    of the entry's sources that it does not take comes as ``({..., "set_aside": reason}, None)``."""
    wanted = set(entry.source_names) - {"synth"}
    if not wanted:
        return
    for doc in iter_docs(docs_file):
        if doc["source"] not in wanted:
            continue
        meta = {"source": doc["source"], "lang": doc["lang"]}
        n = len(doc["text"])
        if entry.lang is not None and doc["lang"] not in entry.lang:
            yield {**meta, "set_aside": "other_language"}, None
        elif n < entry.min_chars:
            yield {**meta, "set_aside": "below_min_chars"}, None
        elif entry.max_chars is not None and n > entry.max_chars:
            yield {**meta, "set_aside": "above_max_chars"}, None
        else:
            yield meta, ("text", doc["text"])


def select_synth(synth_file: Path | None, entry: MixtureEntry) -> Iterator[tuple[dict, tuple[str, list]]]:
    if "synth" not in entry.source_names or synth_file is None or not synth_file.is_file():
        return
    for line in iter_lines(synth_file):
        row = json.loads(line)
        if entry.lang is not None and row.get("lang") not in entry.lang:
            continue
        yield {"source": "synth", "lang": row.get("lang", "other")}, ("chat", row["messages"])


def length_buckets(entry: MixtureEntry) -> list[dict] | None:
    """``[{name, min_tokens, max_tokens, weight}]`` of an entry with ``length_buckets`` (else None)."""
    if entry.length_buckets is None:
        return None
    spec = [(b.min_tokens, b.weight) for b in entry.length_buckets]
    if spec[0][0] > 0:
        spec.insert(0, (0, 1.0))
    return [{"name": f"len{lo}", "min_tokens": lo, "max_tokens": spec[k + 1][0] if k + 1 < len(spec) else None,
             "weight": float(w)} for k, (lo, w) in enumerate(spec)]


def bucket_of(buckets: list[dict], n_tokens: int) -> dict:
    return next(b for b in reversed(buckets) if n_tokens >= b["min_tokens"])


def build_entry(entry: MixtureEntry, items: Iterator, out_dir: Path, info: TokenizerInfo, cfg: MixturesConfig,
                tokenizer_dir: str, num_proc: int, desc: str) -> dict:
    """Tokenize one entry's documents into the shard set ``out_dir`` (or one set per length bucket
    under it); per-language/source counts and the documents set aside, by reason."""
    by_lang: dict = {}
    by_source: dict = {}
    set_aside: dict[str, int] = {}
    meta_rows: list[dict] = []

    def payloads():
        for meta, payload in items:
            if payload is None:
                set_aside[meta["set_aside"]] = set_aside.get(meta["set_aside"], 0) + 1
                continue
            meta_rows.append(meta)
            yield payload

    buckets = length_buckets(entry)
    seen = {b["name"]: {"docs": 0, "tokens": 0} for b in buckets or []}  # weight-0 buckets included
    extra = {"entry": entry.model_dump()}
    with ExitStack() as stack:
        if buckets is None:
            writers = {None: stack.enter_context(ShardWriter(out_dir, info, shard_max_tokens=cfg.shard_max_tokens,
                                                             extra_meta=extra))}
        else:
            out_dir.mkdir(parents=True)
            writers = {b["name"]: stack.enter_context(ShardWriter(
                out_dir / b["name"], info, shard_max_tokens=cfg.shard_max_tokens, extra_meta={**extra, "bucket": b}))
                for b in buckets if b["weight"] > 0}
        bar = stack.enter_context(tqdm(desc=desc, unit="doc", leave=False))
        i = 0
        for ids_list in ordered_map(tokenize_chunk, chunked(payloads(), cfg.batch_size), num_proc=num_proc,
                                    init=init_tokenizer, init_args=(tokenizer_dir,)):
            for ids in ids_list:
                m = meta_rows[i]
                meta_rows[i] = None  # release
                i += 1
                key = None if buckets is None else bucket_of(buckets, len(ids))["name"]
                if key is not None:
                    seen[key]["docs"] += 1
                    seen[key]["tokens"] += int(len(ids))
                if key not in writers:
                    set_aside["length_bucket_weight_0"] = set_aside.get("length_bucket_weight_0", 0) + 1
                    continue
                writers[key].add(ids)
                for table, k in ((by_lang, m["lang"]), (by_source, m["source"])):
                    row = table.setdefault(k, {"docs": 0, "tokens": 0})
                    row["docs"] += 1
                    row["tokens"] += int(len(ids))
            bar.update(len(ids_list))
        metas = {k: w.close() for k, w in writers.items()}
    stats = {"docs": sum(m["num_docs"] for m in metas.values()), "tokens": sum(m["num_tokens"] for m in metas.values()),
             "by_lang": by_lang, "by_source": by_source, "set_aside": set_aside}
    if buckets is None:
        stats["content_sha256"] = metas[None]["content_sha256"]
    else:
        stats["content_sha256"] = hashlib.sha256("".join(m["content_sha256"] for m in metas.values()).encode()).hexdigest()
        stats["buckets"] = {b["name"]: {**b, **seen[b["name"]], "stored": b["name"] in metas} for b in buckets}
    return stats


def mixture_rows(entry: MixtureEntry, stats: dict, epochs_mode: bool) -> list[dict]:
    """The ``{name, path, weight}`` rows of one entry: one per non-empty shard set (bucket)."""
    if "buckets" not in stats:
        if stats["docs"] == 0:
            return []  # an empty shard set cannot be sampled; the card reports it
        weight = float(stats["tokens"] * entry.epochs) if epochs_mode else float(entry.weight)
        return [{"name": entry.set_name, "path": entry.set_name, "weight": weight}]
    live = [b for b in stats["buckets"].values() if b["docs"] > 0 and b["stored"]]
    mass = sum(b["tokens"] * b["weight"] for b in live)
    rows = []
    for b in live:
        weight = b["tokens"] * b["weight"] * (entry.epochs if epochs_mode else entry.weight / mass)
        rows.append({"name": f"{entry.set_name}_{b['name']}", "path": f"{entry.set_name}/{b['name']}",
                     "weight": float(weight)})
    return rows


def write_mixture_yaml(stage_dir: Path, stage: str, tokenizer_dir: str, entries: list[MixtureEntry],
                       built: dict[str, dict], description: str = "") -> dict:
    """``mixture.yaml`` of one stage; returns its content."""
    epochs_mode = any(e.epochs is not None for e in entries)
    rows = [row for e in entries for row in mixture_rows(e, built[e.set_name], epochs_mode)]
    doc = {
        "stage": stage,
        "description": description,
        "tokenizer": str(Path(tokenizer_dir).resolve()),
        "sources": rows,
        "stats": {name: {k: v for k, v in s.items() if k in ("docs", "tokens")} for name, s in built.items()},
    }
    if epochs_mode:
        doc["planned_tokens"] = int(sum(r["weight"] for r in rows))
    header = ("# Written by `patentgpt data run`. Point a pretraining config at this file:\n"
              "#   data: {mixture: <this file>, seq_len: ...}\n"
              "# Shard paths are relative to this file; weights are sampling weights of the mixture loader.\n")
    atomic_write_text(stage_dir / "mixture.yaml", header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return doc
