"""The project's one JSON-lines reader: a bad line costs that line, never the run.

:func:`iter_jsonl` yields ``(line_number, record, None)`` for every JSON object line and
``(line_number, None, reason)`` for every other non-blank line. Reasons:

* ``undecodable_utf8``: the line's bytes are not UTF-8;
* ``malformed_json``: not JSON (a torn last line, a stray header);
* ``too_deeply_nested``: JSON nested deeper than Python's parser can go (``RecursionError``);
* ``not_an_object``: valid JSON that is not an object (a list, a number, a string).

It reads what the file *is*, not what it is called: gzip and zstd files are recognised by their
magic bytes and decompressed on the fly (a gzip file named ``.jsonl`` gives its real records), and
a UTF-8 byte-order mark before the first record is dropped. Lone surrogate escapes (``"\\ud800"``:
valid JSON, but not encodable as UTF-8, so a later write would crash) are replaced with U+FFFD.
A compressed stream that ends early (a truncated download) raises :class:`OSError` naming the
file and the last good line, so callers that report unreadable files do so.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from pathlib import Path
from typing import IO, Iterator

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
UTF8_BOM = b"\xef\xbb\xbf"
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def compression(path: str | os.PathLike) -> str | None:
    """``'gzip'``, ``'zstd'`` or ``None``, from the file's first bytes (its name does not matter)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head == ZSTD_MAGIC:
        return "zstd"
    return None


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """A binary reader of ``path``'s content, decompressed when it is gzip or zstd."""
    kind = compression(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        return io.BufferedReader(_ZstdReader(path))
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """zstd frames decompressed one after another; a stream cut inside a frame raises EOFError
    (``zstandard``'s own stream reader just stops, so a truncated file would look complete)."""

    def __init__(self, path: str | os.PathLike):
        import zstandard

        self._zstd = zstandard.ZstdDecompressor()
        self._src = open(path, "rb")
        self._dobj = self._zstd.decompressobj()
        self._pending = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            chunk = self._src.read(1 << 16)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ends inside a frame")
                return 0
            while chunk:
                self._in_frame = True
                self._pending += self._dobj.decompress(chunk)
                chunk = b""
                if self._dobj.eof:
                    self._in_frame = False
                    chunk = self._dobj.unused_data
                    self._dobj = self._zstd.decompressobj()
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._src.close()
        super().close()


def strip_compression_suffix(path: str | os.PathLike) -> Path:
    """``a.jsonl.gz`` -> ``a.jsonl`` (the name of the content), for telling formats by suffix."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in COMPRESSED_SUFFIXES else path


def _replace_surrogates(obj):
    """Copy of a decoded JSON value with lone surrogates replaced by U+FFFD (iteratively: no depth limit)."""
    if isinstance(obj, str):
        return _SURROGATE.sub("\ufffd", obj)
    if isinstance(obj, list):
        return [_replace_surrogates(v) for v in obj]
    if isinstance(obj, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in obj.items()}
    return obj


def parse_line(raw: bytes) -> tuple[object | None, str | None]:
    """(decoded JSON value, None) or (None, reason) for one line's bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "undecodable_utf8"
    try:
        value = json.loads(text)
        if _SURROGATE_ESCAPE.search(raw):
            value = _replace_surrogates(value)
    except json.JSONDecodeError:
        return None, "malformed_json"
    except RecursionError:
        return None, "too_deeply_nested"
    return value, None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line_number, record_or_None, reject_reason_or_None)`` for each non-blank line of ``path``."""
    path = Path(path)
    lineno = 0
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                if lineno == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                if not raw.strip():
                    continue
                value, reason = parse_line(raw)
                if reason is None and not isinstance(value, dict):
                    reason, value = "not_an_object", None
                yield lineno, value, reason
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise OSError(f"{path}: compressed stream is truncated or corrupt after line {lineno}: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise OSError(f"{path}: compressed stream is truncated or corrupt after line {lineno}: {exc}") from None
        raise


def read_json_records(path: str | os.PathLike, field: str | None = None
                      ) -> Iterator[tuple[int, dict | None, str | None]]:
    """Records of a JSON file holding a list (or ``{field: [...]}``), or of a JSONL file, in the
    shape of :func:`iter_jsonl`. A JSON document that is not a list of records raises ValueError."""
    with open_binary(path) as fh:
        head = fh.read(64 * 1024)
        body = head + fh.read() if head.lstrip(UTF8_BOM + b" \t\r\n")[:1] in (b"[", b"{") else None
    if body is None:
        yield from iter_jsonl(path)
        return
    value, reason = parse_line(body.removeprefix(UTF8_BOM))
    if reason == "malformed_json":  # several objects, one per line: JSON lines after all
        yield from iter_jsonl(path)
        return
    if reason is not None:
        raise ValueError(f"{path}: {reason.replace('_', ' ')}")
    if field is not None and isinstance(value, dict):
        value = value.get(field)
    elif field is None and isinstance(value, dict):  # one object: a one-record file
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{path}: top level is not a list of records" + (f" under {field!r}" if field else ""))
    for i, row in enumerate(value, 1):
        yield (i, row, None) if isinstance(row, dict) else (i, None, "not_an_object")
