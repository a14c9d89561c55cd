"""Intermediate document files: one JSON object per line, plain or gzip (deterministic bytes).

Steps write ``docs.jsonl`` (or ``docs.jsonl.gz`` with ``compress: true``) into their temporary
directory; the runner publishes the directory only when the step is done, so a reader never sees
a half-written file under a published step.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

DOCS = "docs.jsonl"


def docs_path(step_dir: str | os.PathLike) -> Path:
    """The docs file of a step directory (plain or gzip, whichever is there)."""
    step_dir = Path(step_dir)
    for name in (DOCS, DOCS + ".gz"):
        if (step_dir / name).is_file():
            return step_dir / name
    raise FileNotFoundError(f"no {DOCS}[.gz] in {step_dir}")


def dumps(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class JsonlWriter:
    """Write JSON lines to ``path``; gzip when the name ends in ``.gz`` (mtime 0: same bytes every run)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        raw = open(self.path, "wb")
        if self.path.suffix == ".gz":
            self._raw = raw
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
            self._fh = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
        else:
            self._raw = None
            self._fh = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        self.count = 0

    def write(self, obj: dict) -> None:
        self._fh.write(dumps(obj))
        self._fh.write("\n")
        self.count += 1

    def write_line(self, line: str) -> None:
        """A line already serialized by :func:`dumps` (no newline)."""
        self._fh.write(line)
        self._fh.write("\n")
        self.count += 1

    def write_many(self, objs: Iterable[dict]) -> None:
        for obj in objs:
            self.write(obj)

    def close(self) -> None:
        self._fh.flush()
        self._fh.close()  # closes the gzip stream and the raw file
        if self._raw is not None and not self._raw.closed:
            self._raw.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_text(path: str | os.PathLike):
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """Raw lines (without newline) of a docs file written by :class:`JsonlWriter`."""
    with open_text(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line:
                yield line


def iter_docs(path: str | os.PathLike) -> Iterator[dict]:
    for line in iter_lines(path):
        yield json.loads(line)


def count_lines(path: str | os.PathLike) -> int:
    n = 0
    with open_text(path) as fh:
        for _ in fh:
            n += 1
    return n
