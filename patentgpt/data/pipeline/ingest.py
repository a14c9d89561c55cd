"""Ingest: read every source's files, map their fields, render the training text.

JSONL (plain, gzip or zstd, told by magic bytes) is read line by line by
:func:`patentgpt.data.jsonl.iter_jsonl`, so one bad line costs one record, not the file:
``malformed_json``, ``undecodable_utf8``, ``too_deeply_nested`` and ``not_an_object`` are counted
with the line number. JSON, CSV and parquet go through ``datasets`` (with Python's own ``json``/``csv`` as a
fallback when ``datasets`` cannot read a file as a whole, e.g. mixed types or bad bytes in a CSV).
Mapped records with no usable text or without a ``required`` field are ``missing_field``; a field
of the wrong type (a number where text is expected, an object as claims) is ``wrong_type``. An
empty or unreadable file is reported as a file issue and the run goes on.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from patentgpt.config import ConfigError
from patentgpt.data.pipeline.config import DataPipelineConfig, SourceSpec
from patentgpt.data.pipeline.docstore import JsonlWriter
from patentgpt.data.pipeline.report import Ledger
from patentgpt.data.jsonl import iter_jsonl, open_binary, read_json_records, strip_compression_suffix
from patentgpt.data.render import render_patent, render_text

TEXT_FIELDS = ("title", "abstract", "description", "text")
LIST_FIELDS = ("ipc", "cpc")
_EXT_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
               ".parquet": "parquet", ".pq": "parquet"}
_CLAIM_START = re.compile(r"(?:(?<=[.;。；])|^)\s*(?=(?:\d{1,3})\s*[.．、]\s*\S)")


class FieldError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------------------ files
def resolve_files(cfg: DataPipelineConfig) -> dict[str, list[Path]]:
    """Every source's files (globs expanded, sorted); a path matching nothing is a config error."""
    root = Path(cfg.input_root)
    out = {}
    for i, src in enumerate(cfg.sources):
        files: list[Path] = []
        for pattern in src.paths:
            full = Path(pattern) if Path(pattern).is_absolute() else root / pattern
            if any(ch in pattern for ch in "*?["):
                matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
            else:
                matches = [full] if full.is_file() else []
            if not matches:
                raise ConfigError(f"sources.{i}.paths: {pattern!r} matches no file (looked at {full})")
            files.extend(matches)
        out[src.name] = files
    return out


def file_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    fmt = _EXT_FORMAT.get(strip_compression_suffix(path).suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot tell the format of {path}; set the source's format")
    return fmt


# ---------------------------------------------------------------------------------------- readers
def _read_with_datasets(path: Path, fmt: str, src: SourceSpec, cache_dir: str) -> Iterator[dict]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    kwargs: dict = {"data_files": [str(path)], "split": "train", "cache_dir": cache_dir}
    if fmt == "csv":
        kwargs.update(delimiter="\t" if path.suffix == ".tsv" else src.csv_delimiter, dtype=str,
                      keep_default_na=False)
    if fmt == "json" and src.json_field:
        kwargs["field"] = src.json_field
    ds = datasets.load_dataset(fmt, **kwargs)
    yield from ds


def _read_json_python(path: Path, src: SourceSpec) -> Iterator[tuple[dict | None, str | None]]:
    for _, row, reason in read_json_records(path, src.json_field or None):
        yield row, reason


def _read_csv_python(path: Path, src: SourceSpec) -> Iterator[tuple[dict | None, str | None]]:
    with open_binary(path) as fh:
        text = fh.read().decode("utf-8", errors="surrogateescape")
    delim = "\t" if path.suffix == ".tsv" else src.csv_delimiter
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    header = next(reader, None)
    if header is None:
        return
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            yield None, "malformed_row"
            continue
        if any(re.search("[\udc80-\udcff]", cell) for cell in row):
            yield None, "undecodable_utf8"
            continue
        yield dict(zip(header, row)), None


def read_file(path: Path, fmt: str, src: SourceSpec, cache_dir: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """(location number, record or None, reject reason or None) for every record of one file."""
    if fmt == "jsonl":
        yield from iter_jsonl(path)
        return
    try:
        rows = list(_read_with_datasets(path, fmt, src, cache_dir))
        for i, row in enumerate(rows, 1):
            yield i, row, None
        return
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; fall back or report
        if fmt == "parquet":
            raise OSError(f"unreadable parquet: {type(exc).__name__}: {exc}") from None
    reader = _read_json_python if fmt == "json" else _read_csv_python
    try:
        for i, (row, reason) in enumerate(reader(path, src), 1):
            yield i, row, reason
    except (ValueError, UnicodeDecodeError) as exc:
        raise OSError(f"unreadable {fmt}: {exc}") from None


# ---------------------------------------------------------------------------------------- mapping
def normalize_lang(value) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    v = value.strip().lower().replace("_", "-")
    if v in ("zh", "cn", "chinese", "中文") or v.startswith(("zh-", "cmn")):
        return "zh"
    if v in ("en", "english", "eng") or v.startswith("en-"):
        return "en"
    return "other"


def split_claims(text: str) -> list[str]:
    """A claims string as a list: one claim per line, or split before each claim number."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        return lines
    parts = [p.strip() for p in _CLAIM_START.split(text) if p.strip()]
    return parts or [text.strip()]


def _pick(record: dict, ref) -> object:
    if ref is None:
        return None
    for col in ([ref] if isinstance(ref, str) else ref):
        value = record.get(col)
        if value is None or (isinstance(value, (str, list)) and not value):
            continue
        return value
    return None


def _as_text(name: str, value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        joined = "\n".join(v.strip() for v in value if v.strip())
        return joined or None
    raise FieldError("wrong_type", f"{name}: expected text, got {type(value).__name__}")


def _as_list(name: str, value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in re.split(r"[;,|]", value)]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise FieldError("wrong_type", f"{name}: expected a code or a list of codes, got {type(value).__name__}")
    items = [v for v in items if v]
    return items or None


def _as_claims(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return split_claims(value) if value.strip() else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value if v.strip()]
        return items or None
    raise FieldError("wrong_type", f"claims: expected text or a list of texts, got {type(value).__name__}")


def _as_scalar(name: str, value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FieldError("wrong_type", f"{name}: expected text or a number, got bool")
    if isinstance(value, (str, int)):
        return str(value).strip() or None
    if name == "id" and isinstance(value, list) and value and isinstance(value[0], (str, int)):
        return str(value[0])
    raise FieldError("wrong_type", f"{name}: expected text or a number, got {type(value).__name__}")


def map_record(record: dict, src: SourceSpec) -> tuple[dict, str | None]:
    """(meta, body text) of a raw record by the source's field map; raises FieldError."""
    fm = src.fields
    meta: dict = {"kind": src.kind}
    present = {}
    for name in ("title", "abstract", "description"):
        value = _as_text(name, _pick(record, getattr(fm, name)))
        if value is not None:
            meta[name] = value.strip()
            present[name] = True
    body = _as_text("text", _pick(record, fm.text))
    present["text"] = body is not None
    claims = _as_claims(_pick(record, fm.claims))
    if claims:
        meta["claims"] = claims
        present["claims"] = True
    for name in LIST_FIELDS:
        codes = _as_list(name, _pick(record, getattr(fm, name)))
        if codes:
            meta[name] = codes
            present[name] = True
    date = _as_scalar("date", _pick(record, fm.date))
    if date:
        meta["date"] = date
        present["date"] = True
    rid = _as_scalar("id", _pick(record, fm.id))
    if rid:
        meta["native_id"] = rid
        present["id"] = True
    declared = normalize_lang(_pick(record, fm.lang)) or (None if src.lang == "auto" else src.lang)
    meta["declared_lang"] = declared
    extra = {col: record[col] for col in src.extra_fields if record.get(col) is not None}
    if extra:
        meta["extra"] = extra
    missing = [f for f in src.required if not present.get(f)]
    if missing:
        raise FieldError("missing_field", f"required field(s) missing: {', '.join(missing)}")
    if not any(present.get(f) for f in (*TEXT_FIELDS, "claims")):
        raise FieldError("missing_field", "no text field (title/abstract/claims/description/text) present")
    return meta, body


def render(meta: dict, body: str | None, src: SourceSpec) -> str:
    """Training text of a mapped record: a patent's sections by its template, followed by its free
    text if it has one (OCR full text, "Title: ... Abstract: ..."); a text record's title + text."""
    if src.kind == "patent":
        parts = [render_patent(meta, src.template, meta.get("declared_lang")), (body or "").strip()]
        return src.template.separator.join(p for p in parts if p)
    return render_text(meta, body or meta.get("abstract") or meta.get("description") or "")


# -------------------------------------------------------------------------------------------- run
def _make_doc(meta: dict, body: str | None, src: SourceSpec, loc: str, ordinal: int) -> dict:
    native = meta.pop("native_id", None)
    text = render(meta, body, src)
    return {"id": native or f"{src.name}:{ordinal}", "source": src.name, "loc": loc,
            "lang": meta.get("declared_lang") or "other", "text": text, "meta": meta}


def _merge_group(docs: list[dict], key) -> dict:
    """Join consecutive records of one group (e.g. claim sentences of one patent) into one document."""
    first = dict(docs[0])
    meta = dict(first["meta"])
    meta["records"] = sum(d["meta"].get("records", 1) for d in docs)
    meta["group"] = key
    for name in ("claims",):
        merged = [c for d in docs for c in d["meta"].get(name, [])]
        if merged:
            meta[name] = merged
    first["meta"] = meta
    first["id"] = str(key)
    first["text"] = "\n".join(d["text"] for d in docs if d["text"])
    return first


def _file_events(path: Path, fmt: str, src: SourceSpec, cache_dir: str):
    """Per record of one file: ``(loc, None, doc_parts)`` or ``(loc, (reason, detail), None)``
    where ``doc_parts`` is ``(meta, body, record)``. Raises OSError for an unreadable file."""
    for num, record, reason in read_file(path, fmt, src, cache_dir):
        loc = f"{path}:{num}"
        if reason is not None:
            yield loc, (reason, None), None
            continue
        try:
            meta, body = map_record(record, src)
        except FieldError as exc:
            yield loc, (exc.reason, exc.detail), None
            continue
        yield loc, None, (meta, body, record)


def _reject(ledger: Ledger, src: SourceSpec, loc: str, why: tuple) -> None:
    ledger.reject(src.name, why[0], loc=loc, **({"detail": why[1]} if why[1] is not None else {}))


def _empty_doc(doc: dict) -> tuple | None:
    return ("missing_field", "renders to empty text") if not doc["text"].strip() else None


def run_ingest(cfg: DataPipelineConfig, out_dir: Path, ledger: Ledger, writer: JsonlWriter, executor=None,
               parts_dir: Path | None = None) -> dict:
    """Read every source into ``writer``; returns per-file statistics. With an ``executor``, the
    files of a source without ``group_by`` / ``max_records`` are read as parallel tasks, one per
    file, joined in file order (same bytes as reading them here, one after the other)."""
    files = resolve_files(cfg)
    cache_dir = tempfile.mkdtemp(prefix="hf-cache-", dir=out_dir)
    per_file = []
    try:
        for i, src in enumerate(cfg.sources):
            if executor is not None and src.group_by is None and src.max_records is None:
                per_file += _ingest_files_parallel(cfg, i, files[src.name], ledger, writer, executor,
                                                   Path(parts_dir) / f"ingest-{i:03d}")
                continue
            ordinal = 0
            group: list[dict] = []
            group_key = object()
            bar = tqdm(desc=f"ingest {src.name}", unit="rec", leave=False)

            def flush():
                if group:
                    doc = _merge_group(group, group_key) if len(group) > 1 or src.group_by else group[0]
                    writer.write(doc)
                    ledger.keep(src.name, doc["meta"].get("records", 1))
                    group.clear()

            done = False
            for path in files[src.name]:
                if done:
                    break
                fmt = file_format(path, src.format)
                n_file = 0
                try:
                    if path.stat().st_size == 0:
                        ledger.file_issue(src.name, str(path), "empty_file", "0 bytes")
                        per_file.append({"source": src.name, "path": str(path), "records": 0})
                        continue
                    for loc, why, parts in _file_events(path, fmt, src, cache_dir):
                        if src.max_records is not None and ordinal >= src.max_records:
                            done = True
                            break
                        ordinal += 1
                        n_file += 1
                        bar.update(1)
                        ledger.take(src.name)
                        if why is None:
                            doc = _make_doc(parts[0], parts[1], src, loc, ordinal)
                            why = _empty_doc(doc)
                        if why is not None:
                            _reject(ledger, src, loc, why)
                            continue
                        if src.group_by is not None:
                            key = parts[2].get(src.group_by)
                            if key != group_key:
                                flush()
                                group_key = key
                            group.append(doc)
                        else:
                            writer.write(doc)
                            ledger.keep(src.name)
                except OSError as exc:
                    ledger.file_issue(src.name, str(path), "unreadable_file", str(exc)[:500])
                if n_file == 0 and not done and not any(fi["path"] == str(path) for fi in ledger.file_issues):
                    ledger.file_issue(src.name, str(path), "empty_file", "no records")
                per_file.append({"source": src.name, "path": str(path), "format": fmt, "records": n_file})
            flush()
            bar.close()
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"files": per_file}


_INGEST: dict = {}


def _init_ingest_task(cfg: DataPipelineConfig) -> None:
    _INGEST["cfg"] = cfg


def ingest_file_task(stage_dir: str, p: int, payload: tuple[int, str]) -> dict:
    """One file of a source: its documents (ids of records without one numbered within the file;
    the driver renumbers them), rejects and counts, written under ``stage_dir``."""
    from patentgpt.data.pipeline.partitions import part_file

    src = _INGEST["cfg"].sources[payload[0]]
    path = Path(payload[1])
    fmt = file_format(path, src.format)
    ledger = Ledger(part_file(stage_dir, p, "rejects.jsonl"))
    n_file, unnamed = 0, []
    cache_dir = tempfile.mkdtemp(prefix="hf-cache-", dir=stage_dir)
    try:
        with JsonlWriter(part_file(stage_dir, p, "docs.jsonl")) as writer:
            if path.stat().st_size == 0:
                ledger.file_issue(src.name, str(path), "empty_file", "0 bytes")
            else:
                try:
                    for loc, why, parts in _file_events(path, fmt, src, cache_dir):
                        n_file += 1
                        ledger.take(src.name)
                        if why is None:
                            named = bool(parts[0].get("native_id"))
                            doc = _make_doc(parts[0], parts[1], src, loc, n_file)
                            why = _empty_doc(doc)
                        if why is not None:
                            _reject(ledger, src, loc, why)
                            continue
                        if not named:
                            unnamed.append([writer.count, n_file])
                        writer.write(doc)
                        ledger.keep(src.name)
                except OSError as exc:
                    ledger.file_issue(src.name, str(path), "unreadable_file", str(exc)[:500])
                if n_file == 0 and not ledger.file_issues:
                    ledger.file_issue(src.name, str(path), "empty_file", "no records")
    finally:
        ledger.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
    stat = {"source": src.name, "path": str(path), "records": n_file}
    if path.stat().st_size:
        stat["format"] = fmt
    return {"ledger": ledger.counts(), "file_issues": ledger.file_issues, "unnamed": unnamed, "file": stat}


def _ingest_files_parallel(cfg: DataPipelineConfig, i: int, paths: list[Path], ledger: Ledger, writer: JsonlWriter,
                           executor, stage_dir: Path) -> list[dict]:
    from patentgpt.data.pipeline.docstore import iter_lines
    from patentgpt.data.pipeline.partitions import part_file, run_stage

    src = cfg.sources[i]
    results, _ = run_stage(executor, stage_dir, ((p, (i, str(path))) for p, path in enumerate(paths)),
                           ingest_file_task, init=_init_ingest_task, init_args=(cfg,), total=len(paths),
                           desc=f"ingest {src.name}")
    ordinal = 0
    for p, res in enumerate(results):
        unnamed = dict(res["unnamed"])
        for k, line in enumerate(iter_lines(part_file(stage_dir, p, "docs.jsonl"))):
            if k in unnamed:
                doc = json.loads(line)
                doc["id"] = f"{src.name}:{ordinal + unnamed[k]}"
                writer.write(doc)
            else:
                writer.write_line(line)
        ordinal += res["file"]["records"]
        ledger.absorb(res["ledger"], part_file(stage_dir, p, "rejects.jsonl"))
        ledger.file_issues.extend(res["file_issues"])
    return [r["file"] for r in results]


def input_bytes(cfg: DataPipelineConfig) -> int:
    return sum(os.path.getsize(p) for paths in resolve_files(cfg).values() for p in paths)
