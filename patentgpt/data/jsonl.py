"""Reading JSON lines (and JSON arrays) robustly: a bad line costs one record, never the run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

GZIP_MAGIC = b"\x1f\x8b"


def _open_binary(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, record or None, reject reason or None) for every non-blank line."""
    with _open_binary(Path(path)) as fh:
        for n, raw in enumerate(fh, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield n, None, "undecodable_utf8"
                continue
            try:
                record = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                yield n, None, "malformed_json"
                continue
            if not isinstance(record, dict):
                yield n, None, "not_an_object"
                continue
            yield n, record, None


def iter_records(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Records of a JSON array file (``[...]``, numbered from 1) or of a JSON-lines file."""
    path = Path(path)
    with _open_binary(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if not head.startswith(b"["):
        yield from iter_jsonl(path)
        return
    with _open_binary(path) as fh:
        try:
            data = json.loads(fh.read().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            yield 0, None, f"malformed_json_array: {type(exc).__name__}"
            return
    for n, record in enumerate(data, start=1):
        yield (n, record, None) if isinstance(record, dict) else (n, None, "not_an_object")
