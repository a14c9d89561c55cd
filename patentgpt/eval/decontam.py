"""Contamination of eval items by training data: n-gram overlap (13-grams by default).

An item (question + options, or question + reference answer) is *contaminated* when any of its
n-grams occurs in the training data; an item shorter than n counts as one n-gram of its own
length (it matches only when it appears whole). The eval side is small, so it is indexed; the
training side is streamed once and every window is looked up (numpy rolling hashes).

Training data comes as token shard sets (``patentgpt/data/shards.py``) or as documents (the
pipeline's ``docs.jsonl[.gz]``, any JSONL with a ``text`` field, the demo corpus). Both are
compared as *text*: shard documents are decoded with the tokenizer that made them (its
fingerprint is checked against ``meta.json``), and n-grams count lower-cased words, each Chinese
character one unit. Token-level n-grams were tried first and rejected: with a small or
domain-specific vocabulary a 13-token window is two or three English words ("U.S.C. 101 ..."),
so unrelated items matched the demo corpus; decoded text gives the same 13 words whatever the
tokenizer, and the same index serves the data pipeline's exclusion list (:class:`TextMatcher`).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

_MUL = np.uint64(0x9E3779B97F4A7C15)
_UNIT = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def text_units(text: str) -> list[str]:
    """Lower-cased words; each Han character is a unit of its own."""
    return _UNIT.findall(text.lower())


def item_text(item: dict) -> str:
    return "\n".join([item["question"], *item.get("options", []), item.get("reference", "")]).strip()


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-n window of ``ids`` (uint64 polynomial hash, wrapping)."""
    ids = np.asarray(ids, dtype=np.uint64) + np.uint64(1)
    if ids.size < n:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.zeros(ids.size - n + 1, dtype=np.uint64)
        for k in range(n):
            h = h * _MUL + ids[k: ids.size - n + 1 + k]
    return h


class NgramIndex:
    """Eval items' n-grams (as id sequences) -> the items that contain them."""

    def __init__(self, n: int = 13):
        if n < 1:
            raise ValueError("ngram: n must be >= 1")
        self.n = n
        self._by_len: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._arrays: dict[int, np.ndarray] = {}

    def add(self, key: str, ids: Iterable[int]) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.size == 0:
            return
        n = min(self.n, ids.size)
        for h in np.unique(_window_hashes(ids, n)).tolist():
            self._by_len[n][h].add(key)
        self._arrays.clear()

    def scan(self, ids: np.ndarray) -> set[str]:
        """Keys of the items with an n-gram inside ``ids``."""
        found: set[str] = set()
        for n, table in self._by_len.items():
            arr = self._arrays.get(n)
            if arr is None:
                arr = self._arrays[n] = np.fromiter(table.keys(), dtype=np.uint64, count=len(table))
            hashes = _window_hashes(ids, n)
            if hashes.size:
                for h in np.unique(hashes[np.isin(hashes, arr)]).tolist():
                    found |= table[h]
        return found


class TextMatcher:
    """Text-level n-gram matching: eval items in, training texts scanned."""

    def __init__(self, n: int = 13):
        self.index = NgramIndex(n)
        self.vocab: dict[str, int] = {}

    def _ids(self, text: str, grow: bool) -> np.ndarray:
        unknown = -1
        out = []
        for u in text_units(text):
            i = self.vocab.get(u)
            if i is None and grow:
                i = self.vocab[u] = len(self.vocab)
            out.append(unknown if i is None else i)
        # an unknown unit never occurs in an eval n-gram: give each its own id past the vocabulary
        arr = np.asarray(out, dtype=np.int64)
        miss = arr < 0
        arr[miss] = len(self.vocab) + 1 + np.arange(int(miss.sum()))
        return arr

    def add(self, key: str, text: str) -> None:
        self.index.add(key, self._ids(text, grow=True))

    def scan(self, text: str) -> set[str]:
        return self.index.scan(self._ids(text, grow=False))


def iter_document_texts(path: Path) -> Iterator[str]:
    """Texts of a JSONL file (plain or .gz; ``text`` field, else title+abstract+claims) or of every
    ``*.jsonl[.gz]`` under a directory."""
    files = [path] if path.is_file() else sorted([*path.rglob("*.jsonl"), *path.rglob("*.jsonl.gz")])
    for f in files:
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rec = json.loads(line)
                if isinstance(rec.get("text"), str):
                    yield rec["text"]
                else:
                    parts = [rec.get(k) for k in ("title", "abstract", "claims", "description")]
                    yield "\n".join(p if isinstance(p, str) else "\n".join(map(str, p)) for p in parts if p)


def is_shard_set(path: Path) -> bool:
    from patentgpt.data.shards import FORMAT, META

    try:
        return json.loads((Path(path) / META).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def contamination(items: dict[str, list[dict]], sources: list[Path], n: int = 13, tokenizer=None) -> dict:
    """Contaminated item ids per eval set (``items``: set name -> items with ``id``) against
    training ``sources`` (shard sets and/or document files/dirs).

    Returns ``{set: {"n_items", "contaminated": [ids], "share"}, "_sources": [...]}``.
    """
    from tqdm import tqdm

    keys = {f"{name}\x00{it['id']}": (name, it["id"]) for name, its in items.items() for it in its}
    hit: set[str] = set()
    matcher = TextMatcher(n)
    for name, its in items.items():
        for it in its:
            matcher.add(f"{name}\x00{it['id']}", item_text(it))
    scanned = []
    for src in sources:
        src = Path(src)
        if is_shard_set(src):
            from patentgpt.data.shards import ShardSet, TokenizerInfo

            if tokenizer is None:
                raise ValueError(f"decontaminate: {src} is a token shard set; pass the tokenizer that made it")
            shards = ShardSet(src)
            shards.check_tokenizer(TokenizerInfo.from_tokenizer(tokenizer))
            for i in tqdm(range(len(shards)), desc=f"contamination: {src.name}", leave=False):
                hit |= matcher.scan(tokenizer.decode(shards.doc(i).tolist()))
            scanned.append({"path": str(src), "kind": "token_shards", "documents": len(shards)})
        elif src.exists():
            count = 0
            for text in tqdm(iter_document_texts(src), desc=f"contamination: {src.name}", leave=False):
                hit |= matcher.scan(text)
                count += 1
            scanned.append({"path": str(src), "kind": "documents", "documents": count})
        else:
            raise FileNotFoundError(f"decontaminate: training data not found: {src}")
    report: dict = {"_ngram": n, "_sources": scanned}
    for name, its in items.items():
        ids = sorted(keys[k][1] for k in hit if keys[k][0] == name)
        report[name] = {"n_items": len(its), "contaminated": ids,
                        "share": len(ids) / len(its) if its else 0.0}
    return report


def eval_exclusion_matcher(tasks: list[str], n: int = 13) -> TextMatcher:
    """A matcher holding every item of the named eval tasks (the data pipeline's exclusion list);
    keys are ``task/id``. A task whose data is absent is reported and has nothing to exclude."""
    from patentgpt.eval.tasks import load_task

    matcher = TextMatcher(n)
    for name in tasks:
        task = load_task(name)
        if task.skipped:
            print(f"eval exclusion: {name}: {task.skipped}; nothing to exclude from it", flush=True)
        for its in task.items.values():
            for it in its:
                matcher.add(f"{name}/{it['id']}", item_text(it))
    return matcher
