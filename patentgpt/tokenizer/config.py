"""``patentgpt tokenizer train``: the config schema and the run it drives.

Inputs are JSONL files (plain ``text`` records or structured patents, rendered by
:func:`patentgpt.data.render.render_record` with ``template``, the corpus pipeline's template spec), plain ``.txt`` files (one document per line) and token-shard directories (their
``meta.json`` names the JSONL files they were made from, whose text is read). Documents are
split into lines, the unit SentencePiece trains on; over-long lines are cut at a space.

Sentences are reservoir-sampled in Python (``input_sentence_size`` of them, uniformly over the
whole stream, seeded), so a corpus of any size is read once and only the sample sits in memory;
the sample goes to SentencePiece as a file. The run reports its time and peak memory.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field, field_validator

from patentgpt.config import ConfigError, Section
from patentgpt.data.pipeline.config import TemplateSpec
from patentgpt.tokenizer.symbols import SYMBOLS_FILE


class InputSource(Section):
    """One corpus file or shard directory."""

    path: str
    text_field: str | None = None  # default: the top-level text_field
    weight: float = Field(1.0, gt=0)  # each sentence counts this many times (0.5: half of them)
    max_records: int | None = Field(None, ge=1)


class SymbolsSection(Section):
    file: str = str(SYMBOLS_FILE)
    groups: list[str] | None = None  # None: every group in the file


class MergeSection(Section):
    """Optional: merge the trained model into a base vocabulary right after training."""

    base: str  # the base SentencePiece BPE model (e.g. LLaMA-2's tokenizer.model)
    out_dir: str
    vocab_size: int | None = Field(55296, ge=0)  # None: round up to pad_to_multiple; 0: no padding
    pad_to_multiple: int = Field(64, ge=1)
    prune_unreachable: bool | None = None  # None: auto (see merge_protos)
    check_text: str | None = None  # extra English text for the segmentation-change check
    # characters that must be single pieces (patentgpt.tokenizer.charset): a named set such as
    # gb2312-1 (the 3,755 level-1 hanzi), a text file, or a list of them; never trimmed
    required_chars: str | list[str] | None = None


class TokenizerTrainConfig(Section):
    """Everything ``patentgpt tokenizer train`` needs; validated before any reading."""

    name: str = "ip"
    output_dir: str
    inputs: list[InputSource] = Field(min_length=1)
    text_field: str = "text"
    render: bool = True  # render structured patents (title/abstract/claims/...) by `template`
    template: TemplateSpec = Field(default_factory=TemplateSpec)  # the corpus pipeline's: train on what shards hold
    model_type: Literal["bpe"] = "bpe"  # merging and the HF export are for BPE
    vocab_size: int = Field(24000, ge=260)
    character_coverage: float = Field(0.9995, gt=0, le=1)
    input_sentence_size: int = Field(2_000_000, ge=0)  # sentences sampled; 0 keeps every sentence
    max_sentence_length: int = Field(16384, ge=64)  # bytes; longer lines are cut at a space
    num_threads: int = Field(2, ge=1)
    split_digits: bool = True
    byte_fallback: bool = True
    seed: int = 0
    symbols: SymbolsSection = SymbolsSection()
    export_hf: bool = True
    chat_template: bool = True
    merge: MergeSection | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain file name")
        return v


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def resolve_inputs(cfg: TokenizerTrainConfig) -> list[tuple[Path, str, InputSource]]:
    """(file, text_field, source) for every input; a shard directory expands to its JSONL sources."""
    out = []
    for src in cfg.inputs:
        path = Path(src.path)
        field = src.text_field or cfg.text_field
        if path.is_dir():
            meta = path / "meta.json"
            if not meta.is_file():
                raise ConfigError(f"inputs: {path} is a directory without meta.json (not a shard set)")
            sources = json.loads(meta.read_text(encoding="utf-8")).get("sources") or []
            if not sources:
                raise ConfigError(f"inputs: shard set {path} does not name its source files (meta.json 'sources')")
            for s in sources:
                if not Path(s).is_file():
                    raise ConfigError(f"inputs: source {s} of shard set {path} not found")
                out.append((Path(s), field, src))
        elif path.is_file():
            out.append((path, field, src))
        else:
            raise ConfigError(f"inputs: {path} not found")
    return out


def _documents(path: Path, text_field: str, render: bool, rejects: list, template=None) -> Iterator[str]:
    if path.suffix == ".txt":
        with open(path, encoding="utf-8", errors="replace") as fh:
            yield from (ln.rstrip("\n") for ln in fh if ln.strip())
        return
    if render:
        from patentgpt.data.tokenize import read_jsonl

        yield from read_jsonl([path], text_field, rejects, template=template)
        return
    from patentgpt.data.jsonl import iter_jsonl

    for lineno, record, reason in iter_jsonl(path):
        text = record.get(text_field) if record is not None else None
        if isinstance(text, str) and text.strip():
            yield text
        else:
            rejects.append((str(path), lineno, reason or "no_text"))


def split_sentences(text: str, max_bytes: int) -> Iterator[str]:
    """Non-empty lines of ``text``, each cut (at a space where possible) to at most ``max_bytes``."""
    for line in text.splitlines():
        if not line.strip():
            continue
        while len(line.encode("utf-8")) > max_bytes:
            cut = max_bytes // 4  # characters: safe for any UTF-8 text
            space = line.rfind(" ", cut // 2, cut)
            cut = space if space > 0 else cut
            yield line[:cut]
            line = line[cut:]
        if line.strip():
            yield line


class Reservoir:
    """Uniform sample of ``size`` items from a stream of unknown length (Vitter's Algorithm R)."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.items, self.seen = size, random.Random(seed), [], 0

    def add(self, item: str) -> None:
        self.seen += 1
        if self.size == 0 or len(self.items) < self.size:
            self.items.append(item)
            return
        j = self.rng.randrange(self.seen)
        if j < self.size:
            self.items[j] = item


def sample_sentences(cfg: TokenizerTrainConfig) -> tuple[list[str], dict]:
    """Read every input once; return the sentence sample and per-source counts."""
    from tqdm.auto import tqdm

    reservoir = Reservoir(cfg.input_sentence_size, cfg.seed)
    rng = random.Random(cfg.seed + 1)
    per_source = []
    rejects: list = []
    bar = tqdm(desc="read corpus", unit="doc", mininterval=1.0)
    for path, field, src in resolve_inputs(cfg):
        docs = sentences = chars = 0
        n_rejects = len(rejects)
        for text in _documents(path, field, cfg.render, rejects, cfg.template):
            if src.max_records and docs >= src.max_records:
                break
            docs += 1
            bar.update()
            for sent in split_sentences(text, cfg.max_sentence_length):
                sentences += 1
                chars += len(sent)
                copies = int(src.weight) + (rng.random() < src.weight - int(src.weight))
                for _ in range(copies):
                    reservoir.add(sent)
        per_source.append({"path": str(path), "text_field": field, "weight": src.weight, "documents": docs,
                           "sentences": sentences, "chars": chars, "rejected": len(rejects) - n_rejects})
    bar.close()
    stats = {
        "sources": per_source,
        "documents": sum(s["documents"] for s in per_source),
        "sentences_seen": reservoir.seen,
        "sentences_sampled": len(reservoir.items),
        "rejected": len(rejects),
    }
    if not reservoir.items:
        raise ConfigError("tokenizer training corpus is empty: no text in "
                          + ", ".join(s["path"] for s in per_source)
                          + (f" ({len(rejects)} records rejected)" if rejects else ""))
    return reservoir.items, stats


def train_from_config(cfg: TokenizerTrainConfig) -> dict:
    """Sample, train, export; publish ``output_dir`` atomically; return the run report.

    ``output_dir`` gets ``NAME.model`` (SentencePiece), ``hf/`` (transformers tokenizer encoding
    exactly as the model), ``config.yaml`` and ``train_report.json``.
    """
    from patentgpt.config import save_config
    from patentgpt.io import atomic_write_json, publish_dir
    from patentgpt.tokenizer.hf import CHATML_TEMPLATE, save_hf_tokenizer
    from patentgpt.tokenizer.symbols import load_symbols
    from patentgpt.tokenizer.train import train_sentencepiece

    t0 = time.time()
    try:
        symbols = load_symbols(cfg.symbols.file, cfg.symbols.groups)
    except (KeyError, FileNotFoundError) as exc:
        raise ConfigError(f"symbols: {exc}") from None
    resolve_inputs(cfg)  # fail on a missing input before reading anything
    if cfg.merge is not None:
        from patentgpt.tokenizer.hf import load_proto

        from patentgpt.tokenizer.charset import required_char_set

        base = load_proto(cfg.merge.base)  # fail now, not after training, on a bad base
        required_char_set(cfg.merge.required_chars)  # and on an unknown character set
        if cfg.merge.vocab_size and cfg.merge.vocab_size < len(base.pieces):
            raise ConfigError(f"merge.vocab_size {cfg.merge.vocab_size} is smaller than the base vocabulary "
                              f"({len(base.pieces)} pieces in {cfg.merge.base})")
    out = Path(cfg.output_dir)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sentences, stats = sample_sentences(cfg)
        t_read = time.time()
        sample_file = staging / "sample.txt"
        with open(sample_file, "w", encoding="utf-8") as fh:
            for s in sentences:
                fh.write(s + "\n")
        del sentences
        print(f"training a {cfg.vocab_size}-piece {cfg.model_type.upper()} model on "
              f"{stats['sentences_sampled']:,} of {stats['sentences_seen']:,} sentences", file=sys.stderr, flush=True)
        try:
            model = train_sentencepiece(
                input_files=[sample_file], model_prefix=staging / cfg.name, vocab_size=cfg.vocab_size,
                user_defined_symbols=symbols, character_coverage=cfg.character_coverage, model_type=cfg.model_type,
                byte_fallback=cfg.byte_fallback, split_digits=cfg.split_digits, input_sentence_size=0,
                num_threads=cfg.num_threads, max_sentence_length=cfg.max_sentence_length, seed=cfg.seed)
        except RuntimeError as exc:  # SentencePiece reports bad settings (vocab_size vs characters) this way
            raise ConfigError(f"SentencePiece training failed: {str(exc).split('] ')[-1]}") from None
        sample_file.unlink()
        t_train = time.time()
        if cfg.export_hf:
            save_hf_tokenizer(model, staging / "hf", chat_template=CHATML_TEMPLATE if cfg.chat_template else None)
        import sentencepiece as spm

        size = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
        report = {
            "name": cfg.name,
            "model": str(out / model.name),
            "hf_dir": str(out / "hf") if cfg.export_hf else None,
            "vocab_size": size,
            "symbols": len(symbols),
            **stats,
            "seconds": {"read_and_sample": round(t_read - t0, 2), "train": round(t_train - t_read, 2),
                        "export": round(time.time() - t_train, 2), "total": round(time.time() - t0, 2)},
            "peak_rss_mb": _peak_rss_mb(),
        }
        save_config(cfg, staging / "config.yaml")
        atomic_write_json(staging / "train_report.json", report)
        publish_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if cfg.merge is not None:
        from patentgpt.tokenizer.merge import merge_tokenizers

        m = cfg.merge
        merged = merge_tokenizers(m.base, out / model.name, m.out_dir, vocab_size=m.vocab_size,
                                  pad_to_multiple=m.pad_to_multiple, prune_unreachable=m.prune_unreachable,
                                  check_text=m.check_text, chat_template=cfg.chat_template,
                                  required_chars=m.required_chars)
        report["merge"] = {k: merged[k] for k in ("out_dir", "vocab_size", "appended", "trimmed", "padded",
                                                  "pruned_unreachable", "pruned_missing_chars",
                                                  "unreachable_appended", "appended_with_missing_chars")}
        report["merge"]["english_words_changed_fraction"] = \
            merged["english_segmentation"]["words_changed_fraction"]
        report["merge"]["required_chars"] = merged["required_chars"]
        atomic_write_json(out / "train_report.json", report)
    return report
