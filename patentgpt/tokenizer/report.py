"""``patentgpt tokenizer report``: compression of tokenizers on held-out text, by language.

For each tokenizer x language: tokens per character, characters per token, UTF-8 bytes per
token, the byte-fallback rate (share of tokens that are ``<0xNN>`` pieces: characters the
vocabulary does not cover) and a few segmentation samples. Tokenizers are SentencePiece
``.model`` files or HF tokenizer directories; texts are ``.txt`` (one document per line) or
``.jsonl``: the text as given, i.e. a structured record's sections (title, abstract, claims,
...) joined by newlines *without* the section markers training adds (markers are single tokens
that would count as characters and flatter tokens/char); ``report.json`` states this under
``rendering``. Writes ``report.json``, ``report.md`` (one markdown table) and ``report.png``
(one panel per metric and language, each on its own scale, values relative to the first
tokenizer printed on the bars).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from patentgpt.config import ConfigError
from patentgpt.data.render import PatentTemplate

BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
AS_GIVEN = PatentTemplate(markers=False, headings="none")  # a record's own text, nothing added
RENDERING = ("jsonl: text field as given; structured records: their sections (title, abstract, claims, "
             "description, ipc) joined by newlines, no section markers or headings")


@dataclass
class Encoder:
    """A tokenizer reduced to what the report needs: text -> piece strings, and its size."""

    name: str
    path: str
    vocab_size: int
    pieces: Callable[[str], list[str]]


def load_encoder(name: str, path: str | Path) -> Encoder:
    path = Path(path)
    if path.is_file():
        import sentencepiece as spm

        from patentgpt.tokenizer.hf import load_proto

        load_proto(path)  # a clear error when it is not a SentencePiece model
        sp = spm.SentencePieceProcessor(model_file=str(path))
        return Encoder(name, str(path), sp.get_piece_size(), lambda t: sp.encode(t, out_type=str))
    if path.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        return Encoder(name, str(path), len(tok),
                       lambda t: tok.convert_ids_to_tokens(tok(t, add_special_tokens=False)["input_ids"]))
    raise ConfigError(f"--tokenizer {name}={path}: not found (a .model file or an HF tokenizer directory)")


def load_texts(path: str | Path) -> list[str]:
    """Documents of a ``.txt`` (one per non-empty line) or ``.jsonl`` file (rendered records)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--text {path}: file not found")
    if path.suffix == ".jsonl":
        from patentgpt.data.tokenize import read_jsonl

        docs = list(read_jsonl([path], template=AS_GIVEN))
    else:
        docs = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not docs:
        raise ConfigError(f"--text {path}: no text in it")
    return docs


def measure(enc: Encoder, docs: list[str], n_samples: int = 3, sample_chars: int = 80) -> dict:
    """Compression figures of ``enc`` on ``docs`` (totals over all documents)."""
    tokens = chars = nbytes = byte_tokens = 0
    for doc in docs:
        pieces = enc.pieces(doc)
        tokens += len(pieces)
        chars += len(doc)
        nbytes += len(doc.encode("utf-8"))
        byte_tokens += sum(1 for p in pieces if BYTE_PIECE.match(p))
    samples = []
    for doc in docs[:n_samples]:
        head = doc[:sample_chars]
        samples.append({"text": head, "pieces": enc.pieces(head)})
    return {
        "documents": len(docs),
        "chars": chars,
        "bytes": nbytes,
        "tokens": tokens,
        "tokens_per_char": round(tokens / max(1, chars), 5),
        "chars_per_token": round(chars / max(1, tokens), 5),
        "bytes_per_token": round(nbytes / max(1, tokens), 5),
        "byte_fallback_rate": round(byte_tokens / max(1, tokens), 5),
        "samples": samples,
    }


def _markdown(report: dict) -> str:
    names = list(report["tokenizers"])
    lines = ["# Tokenizer report", "",
             "| tokenizer | vocab | language | tokens | tokens/char | chars/token | bytes/token | byte fallback | "
             "tokens vs first |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lang, per_tok in report["results"].items():
        ref = per_tok[names[0]]["tokens"]
        for name in names:
            r = per_tok[name]
            lines.append(f"| {name} | {report['tokenizers'][name]['vocab_size']:,} | {lang} | {r['tokens']:,} | "
                         f"{r['tokens_per_char']:.4f} | {r['chars_per_token']:.3f} | {r['bytes_per_token']:.3f} | "
                         f"{100 * r['byte_fallback_rate']:.2f}% | {r['tokens'] / max(1, ref):.3f}x |")
    lines += ["", "## Segmentation samples", ""]
    for lang, per_tok in report["results"].items():
        for name in names:
            for s in per_tok[name]["samples"][:1]:
                shown = " | ".join(s["pieces"]).replace("\n", "\\n")
                lines.append(f"- **{lang} / {name}**: `{shown}`")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> list[str]:
    """One panel per (metric, language), each on its own y scale (Chinese ~1.5 tokens/char and
    English ~0.28 on one axis hide every English difference); bars are labelled with the value
    and its ratio to the first tokenizer. Returns the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, langs = list(report["tokenizers"]), list(report["results"])
    metrics = [("tokens_per_char", "tokens/char (lower is better)"), ("byte_fallback_rate", "byte-fallback rate")]
    fig, axes = plt.subplots(len(metrics), len(langs), figsize=(1.6 + 1.2 * len(names) * len(langs), 7.0),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    titles = []
    for row, (key, label) in enumerate(metrics):
        for col, lang in enumerate(langs):
            ax = axes[row][col]
            vals = [report["results"][lang][name][key] for name in names]
            bars = ax.bar(range(len(names)), vals, color=[colors[k % len(colors)] for k in range(len(names))])
            ref = vals[0]
            ax.bar_label(bars, labels=[f"{v:.4g}" + (f"\n{v / ref:.3f}x" if ref and k else "")
                                       for k, v in enumerate(vals)], fontsize=7)
            ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
            ax.set_ylim(0, max(max(vals) * 1.3, 1e-6))
            titles.append(f"{lang}: {label}")
            ax.set_title(titles[-1], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return titles


def tokenizer_report(tokenizers: dict[str, str | Path], texts: dict[str, str | Path], out_dir: str | Path) -> dict:
    """Measure every tokenizer on every language's text; publish ``out_dir`` atomically."""
    import shutil

    from patentgpt.io import atomic_write_json, atomic_write_text, publish_dir

    if not tokenizers or not texts:
        raise ConfigError("give at least one --tokenizer NAME=PATH and one --text LANG=FILE")
    encoders = {name: load_encoder(name, path) for name, path in tokenizers.items()}
    docs = {lang: load_texts(path) for lang, path in texts.items()}
    report = {
        "tokenizers": {n: {"path": e.path, "vocab_size": e.vocab_size} for n, e in encoders.items()},
        "texts": {lang: str(p) for lang, p in texts.items()},
        "rendering": RENDERING,
        "results": {lang: {n: measure(e, d) for n, e in encoders.items()} for lang, d in docs.items()},
    }
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        atomic_write_json(staging / "report.json", report)
        atomic_write_text(staging / "report.md", _markdown(report))
        _plot(report, staging / "report.png")
        publish_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    """``NAME=PATH`` arguments -> ordered dict; a clear error on a malformed one or a repeated name."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {item!r}: expected NAME=PATH")
        if name in out:
            raise ConfigError(f"{flag}: name {name!r} given twice")
        out[name] = path
    return out
