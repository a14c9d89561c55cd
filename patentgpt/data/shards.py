"""The on-disk token-shard format every PatentGPT stage reads and writes.

A shard set is a directory::

    meta.json           written last: its presence marks the set complete
    shard_00000.bin     token ids of concatenated documents (uint16 or uint32, little endian)
    shard_00000.idx     int64 document offsets into the .bin, length num_docs + 1
    ...

``meta.json`` names the tokenizer (name, vocab size, fingerprint of its vocabulary, BOS/EOS
ids) so a loader can refuse shards made with another tokenizer. Documents are stored without
BOS/EOS: the loader adds them when packing. The writer builds the set in a hidden temporary
directory and renames it into place, so a crash never leaves a set that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from patentgpt.errors import ShardError  # re-exported as patentgpt.data.shards.ShardError
from patentgpt.tokenizer.info import TokenizerInfo, vocab_fingerprint  # noqa: F401 - re-exported
from patentgpt.io import atomic_write_json, publish_dir

FORMAT = "patentgpt-token-shards"
VERSION = 1
META = "meta.json"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass
class _OpenShard:
    index: int
    bin_fh: object
    offsets: list = field(default_factory=lambda: [0])


class ShardWriter:
    """Append documents (token id sequences); ``close()`` publishes the set atomically.

    Use as a context manager: on an exception the temporary directory is removed and nothing
    appears under ``out_dir``.
    """

    def __init__(self, out_dir: str | os.PathLike, tokenizer: TokenizerInfo, *,
                 shard_max_tokens: int = 1 << 27, extra_meta: dict | None = None, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise ShardError(f"{self.out_dir} already exists (pass overwrite=True to replace it)")
        self.tokenizer = tokenizer
        self.dtype = dtype_for_vocab(tokenizer.vocab_size)
        self.shard_max_tokens = int(shard_max_tokens)
        self.extra_meta = dict(extra_meta or {})
        self.tmp_dir = self.out_dir.with_name(f".{self.out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        self._shards: list[dict] = []
        self._cur: _OpenShard | None = None
        self._hash = hashlib.sha256()
        self.num_docs = 0
        self.num_tokens = 0
        self.max_token_id = -1
        self._closed = False

    def _roll(self) -> _OpenShard:
        if self._cur is not None:
            self._finish_shard()
        idx = len(self._shards)
        fh = open(self.tmp_dir / f"shard_{idx:05d}.bin", "wb")
        self._cur = _OpenShard(idx, fh)
        return self._cur

    def _finish_shard(self) -> None:
        cur = self._cur
        cur.bin_fh.flush()
        os.fsync(cur.bin_fh.fileno())
        cur.bin_fh.close()
        np.asarray(cur.offsets, dtype=np.int64).tofile(self.tmp_dir / f"shard_{cur.index:05d}.idx")
        self._shards.append({
            "name": f"shard_{cur.index:05d}",
            "num_docs": len(cur.offsets) - 1,
            "num_tokens": int(cur.offsets[-1]),
        })
        self._cur = None

    def add(self, ids: Sequence[int] | np.ndarray) -> None:
        if self._closed:
            raise ShardError("writer is closed")
        arr = np.asarray(ids, dtype=np.int64)
        if arr.ndim != 1:
            raise ShardError("a document must be a 1-D sequence of token ids")
        if arr.size and (arr.min() < 0 or arr.max() >= self.tokenizer.vocab_size):
            raise ShardError(
                f"token id out of range [0, {self.tokenizer.vocab_size}) for tokenizer {self.tokenizer.name}")
        cur = self._cur
        if cur is None or (cur.offsets[-1] > 0 and cur.offsets[-1] + arr.size > self.shard_max_tokens):
            cur = self._roll()
        data = arr.astype(self.dtype).tobytes()
        cur.bin_fh.write(data)
        self._hash.update(data)
        self._hash.update(b"\x00doc\x00")
        cur.offsets.append(cur.offsets[-1] + arr.size)
        self.num_docs += 1
        self.num_tokens += int(arr.size)
        if arr.size:
            self.max_token_id = max(self.max_token_id, int(arr.max()))

    def add_many(self, docs: Iterable[Sequence[int]]) -> None:
        for ids in docs:
            self.add(ids)

    def close(self) -> dict:
        if self._closed:
            raise ShardError("writer already closed")
        if self._cur is not None:
            self._finish_shard()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype.name,
            "tokenizer": asdict(self.tokenizer),
            "num_docs": self.num_docs,
            "num_tokens": self.num_tokens,
            "max_token_id": self.max_token_id,
            "content_sha256": self._hash.hexdigest(),
            "shards": self._shards,
            **self.extra_meta,
        }
        atomic_write_json(self.tmp_dir / META, meta)
        publish_dir(self.tmp_dir, self.out_dir)
        self._closed = True
        return meta

    def abort(self) -> None:
        if self._cur is not None:
            self._cur.bin_fh.close()
            self._cur = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


class ShardSet:
    """Read-only, memory-mapped view of a complete shard set."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META
        if not self.path.is_dir():
            raise ShardError(f"shard directory not found: {self.path}")
        if not meta_path.is_file():
            raise ShardError(
                f"{self.path} has no {META}: not a shard set, or an incomplete one (writes publish {META} last)")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ShardError(f"{meta_path}: corrupt JSON: {exc}") from None
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise ShardError(f"{meta_path}: not a {FORMAT} v{VERSION} shard set")
        self.tokenizer = TokenizerInfo(**self.meta["tokenizer"])
        self.dtype = np.dtype(self.meta["dtype"])
        self._bins: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        starts = [0]
        for shard in self.meta["shards"]:
            bin_path = self.path / f"{shard['name']}.bin"
            idx_path = self.path / f"{shard['name']}.idx"
            if not bin_path.is_file() or not idx_path.is_file():
                raise ShardError(f"{self.path}: missing {bin_path.name} or {idx_path.name}")
            offsets = np.fromfile(idx_path, dtype=np.int64)
            expected_bytes = shard["num_tokens"] * self.dtype.itemsize
            if len(offsets) != shard["num_docs"] + 1 or bin_path.stat().st_size != expected_bytes:
                raise ShardError(f"{self.path}: {shard['name']} is truncated or does not match {META}")
            tokens = (np.memmap(bin_path, dtype=self.dtype, mode="r") if expected_bytes
                      else np.zeros(0, dtype=self.dtype))
            self._bins.append(tokens)
            self._offsets.append(offsets)
            starts.append(starts[-1] + shard["num_docs"])
        self._doc_starts = np.asarray(starts, dtype=np.int64)
        self.num_docs = int(self.meta["num_docs"])
        self.num_tokens = int(self.meta["num_tokens"])
        if self.num_docs != int(self._doc_starts[-1]):
            raise ShardError(f"{meta_path}: num_docs disagrees with its shards")

    def __len__(self) -> int:
        return self.num_docs

    def doc(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_docs:
            raise IndexError(i)
        s = int(np.searchsorted(self._doc_starts, i, side="right") - 1)
        j = i - int(self._doc_starts[s])
        off = self._offsets[s]
        return self._bins[s][off[j]:off[j + 1]]

    def doc_lengths(self) -> np.ndarray:
        return np.concatenate([np.diff(o) for o in self._offsets]) if self._offsets else np.zeros(0, np.int64)

    def check_tokenizer(self, expected: TokenizerInfo, model_vocab_size: int | None = None) -> None:
        """Refuse shards whose tokenizer differs from the run's, or whose ids the model cannot embed."""
        got = self.tokenizer
        if not got.same_vocab(expected):
            raise ShardError(
                f"{self.path} was tokenized with {got.name!r} (vocab {got.vocab_size}, fingerprint "
                f"{got.fingerprint}) but this run uses {expected.name!r} (vocab {expected.vocab_size}, "
                f"fingerprint {expected.fingerprint}); re-tokenize the data with the run's tokenizer")
        if model_vocab_size is not None and got.vocab_size > model_vocab_size:
            raise ShardError(
                f"{self.path}: tokenizer vocab {got.vocab_size} is larger than the model's vocab_size "
                f"{model_vocab_size}; grow the embeddings (patentgpt model extend-vocab) or fix model.vocab_size")
