"""Schema of a corpus pipeline run (``configs/data/*.yaml``), validated before any work starts.

Relative paths (``output_dir``, ``input_root``, ``mixtures.tokenizer``) are taken from the working
directory, as in the pretraining configs; a source's ``paths`` (globs allowed) are taken from
``input_root``. Every mistake is a :class:`~patentgpt.config.ConfigError` naming the key.
"""

from __future__ import annotations

import re
from typing import Literal, Union

from pydantic import Field, field_validator, model_validator

from patentgpt.config import ConfigError, Section

STEP_ORDER = ("ingest", "clean", "lang", "filter", "dedup", "rewrite", "synth", "mixtures", "card")
CANONICAL_FIELDS = ("id", "title", "abstract", "claims", "description", "text", "ipc", "cpc", "date", "lang")
SECTION_NAMES = ("title", "abstract", "claims", "description", "ipc", "cpc", "date")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

ColumnRef = Union[str, list[str], None]


# ----------------------------------------------------------------------------------------- sources
class FieldMap(Section):
    """Canonical field -> column name of the source (or a list of alternatives: the first present,
    non-empty one wins; ``null``: not mapped). Defaults are the canonical names themselves."""

    id: ColumnRef = "id"
    title: ColumnRef = "title"
    abstract: ColumnRef = "abstract"
    claims: ColumnRef = "claims"
    description: ColumnRef = "description"
    text: ColumnRef = "text"
    ipc: ColumnRef = "ipc"
    cpc: ColumnRef = "cpc"
    date: ColumnRef = "date"
    lang: ColumnRef = "lang"


class TemplateSpec(Section):
    """How a structured patent becomes training text: which sections, in which order, with the
    IP tokenizer's section markers (``<|title|>`` ...) and/or headings in the document's language
    (``Title:`` / ``标题：``)."""

    sections: list[Literal["title", "abstract", "claims", "description", "ipc", "cpc", "date"]] = Field(
        default_factory=lambda: ["title", "abstract", "claims", "description", "ipc"], min_length=1)
    markers: bool = True
    headings: Literal["none", "auto", "en", "zh"] = Field(
        "none", description="auto: headings in the record's declared language (en when unknown)")
    separator: str = "\n"


class SourceSpec(Section):
    name: str
    paths: list[str] = Field(..., min_length=1, description="files or globs, relative to input_root")
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = "auto"
    kind: Literal["patent", "text"] = Field(
        "patent", description="patent: render structured fields with the template; text: title + text")
    lang: Literal["auto", "zh", "en", "other"] = Field(
        "auto", description="declared language when records carry none")
    fields: FieldMap = Field(default_factory=FieldMap)
    template: TemplateSpec = Field(default_factory=TemplateSpec)
    required: list[Literal["id", "title", "abstract", "claims", "description", "text", "ipc", "cpc", "date"]] = Field(
        default_factory=list, description="records lacking one of these are rejected as missing_field")
    extra_fields: list[str] = Field(default_factory=list, description="columns copied as they are into meta.extra")
    group_by: str | None = Field(None, description="consecutive records with the same value of this column "
                                 "are joined into one document (e.g. claim sentences of one patent)")
    priority: int = Field(0, description="dedup keeps the copy from the lowest priority, then lowest id")
    max_records: int | None = Field(None, ge=1, description="read at most this many records (quick runs)")
    json_field: str | None = Field(None, description="format json: key of the record list in the file")
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    filters: dict = Field(default_factory=dict, description="overrides of the filters section for this source")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"source name {v!r} must be letters, digits, '_', '-', '.'")
        return v


# ------------------------------------------------------------------------------------------ clean
class CleanConfig(Section):
    normalization: Literal["nfc", "nfkc", "none"] = Field(
        "nfc", description="nfc (default) keeps Chinese full-width punctuation and super/subscripts "
        "(mm², 10⁻³) that NFKC would rewrite; fullwidth letters/digits and ligatures are folded apart")
    fold_fullwidth_alnum: bool = True
    fold_ligatures: bool = True
    remove_control: bool = Field(True, description="C0/C1 controls, zero-width chars, soft hyphens, "
                                 "private-use glyphs; form feed -> paragraph break")
    strip_html: bool = True
    fix_csv_quotes: bool = Field(True, description='undo CSV double-quote escaping left in text ("" -> ")')
    uspto_markup: bool = Field(True, description="USPTO full-text markup to Unicode: N.sub.2 -> N₂, "
                               ".alpha. -> α, ##EQU1## placeholders removed")
    ocr_dehyphenate: bool = Field(True, description="join words hyphenated across a line break")
    join_broken_lines: bool = Field(True, description="join hard-wrapped lines inside a sentence")
    collapse_whitespace: bool = True
    max_blank_lines: int = Field(1, ge=0)


# ------------------------------------------------------------------------------------------- lang
class LangConfig(Section):
    keep: list[Literal["zh", "en", "other"]] = Field(default_factory=lambda: ["zh", "en"], min_length=1)
    trust_declared: bool = Field(False, description="keep a declared language instead of detecting it")
    min_letters: int = Field(3, ge=1, description="fewer letters than this: other")
    zh_min_han_share: float = Field(0.3, ge=0, le=1, description="Han characters over Han + Latin words")
    other_script_max_share: float = Field(0.3, ge=0, le=1, description="kana/hangul/Cyrillic/... share above "
                                          "which a document is other")
    en_min_function_word_ratio: float = Field(0.04, ge=0, le=1,
                                              description="Latin-script text with fewer English function "
                                              "words (per word) is other")
    en_min_words_to_judge: int = Field(30, ge=1, description="shorter Latin texts count as en")


# ---------------------------------------------------------------------------------------- filters
class LengthFilter(Section):
    enabled: bool = True
    min_chars: int = Field(50, ge=0, description="non-whitespace characters")
    max_chars: int | None = Field(3_000_000, ge=1)


class RatioFilter(Section):
    enabled: bool = True
    max_ratio: float = Field(..., ge=0, le=1)


class RepeatedLinesFilter(Section):
    enabled: bool = True
    max_dup_line_frac: float = Field(0.3, ge=0, le=1, description="share of lines that repeat an earlier line")
    max_dup_line_char_frac: float = Field(0.2, ge=0, le=1, description="share of characters in repeated lines")
    min_lines: int = Field(5, ge=1)
    min_line_chars: int = Field(10, ge=1, description="shorter lines are not compared (list markers, numbers)")


class RepeatedNgramsFilter(Section):
    enabled: bool = True
    n: int = Field(10, ge=2, description="words (en/other) or characters x2 (zh)")
    max_dup_frac: float = Field(0.7, ge=0, le=1, description="share of tokens inside n-grams seen earlier "
                                "(Markush chemistry patents reach 0.64; degenerate copies more)")
    min_tokens: int = Field(100, ge=1)


class MeanWordLengthFilter(Section):
    enabled: bool = True
    min_len: float = Field(3.0, ge=0)
    max_len: float = Field(10.0, gt=0)
    min_words: int = Field(20, ge=1, description="not judged on fewer words")


class GarbledOcrFilter(Section):
    enabled: bool = True
    min_wordlike_frac: float = Field(0.8, ge=0, le=1, description="share of tokens that look like words")
    max_garble_score: float = Field(0.15, ge=0, le=2, description="(1 - word-like share) + anomaly share")
    max_anomaly_frac: float = Field(0.1, ge=0, le=1, description="share of words with OCR confusions "
                                    "(mixed case, digits or stray symbols inside words, run-together words)")
    min_function_word_frac: float = Field(0.15, ge=0, le=1, description="en: share of English function "
                                          "words (the, of, and...); prose has ~0.3, drawing-page noise less")
    max_replacement_frac: float = Field(0.05, ge=0, le=1, description="U+FFFD per character (any language)")
    min_words: int = Field(20, ge=1, description="Latin-script tests skipped below this many words")


DEFAULT_BOILERPLATE = [
    "all rights reserved", "click here", "cookie policy", "accept cookies", "privacy policy", "terms of use",
    "subscribe to our newsletter", "enable javascript", "lorem ipsum", "intentionally left blank",
    "版权所有", "保留所有权利", "免责声明", "点击这里", "点击此处", "扫码关注", "关注公众号", "关注我们的公众号",
]


class BoilerplateFilter(Section):
    enabled: bool = True
    phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_BOILERPLATE),
                               description="case-insensitive phrases; a line containing one is boilerplate")
    patterns: list[str] = Field(default_factory=list, description="regular expressions, same effect (slower)")
    max_removed_frac: float = Field(0.5, ge=0, le=1, description="boilerplate lines are cut; a document "
                                    "losing more than this share of its characters is dropped")

    @field_validator("phrases")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [p.lower() for p in v if p.strip()]

    @field_validator("patterns")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regex {p!r}: {exc}") from None
        return v


class EvalExclusion(Section):
    tasks: list[str] = Field(default_factory=list, description="eval task names (evals/**/NAME.yaml): a document "
                             "sharing an n-gram with one of their items is removed as eval_contamination")
    ngram: int = Field(13, ge=1, description="words (each Chinese character one) per n-gram")


class FiltersConfig(Section):
    """Quality filters, applied in this order; the first that fails names the removal reason
    (``too_short``/``too_long`` for length, otherwise the filter's name)."""

    eval_exclusion: EvalExclusion = Field(default_factory=EvalExclusion)

    length: LengthFilter = Field(default_factory=LengthFilter)
    boilerplate: BoilerplateFilter = Field(default_factory=BoilerplateFilter)
    garbled_ocr: GarbledOcrFilter = Field(default_factory=GarbledOcrFilter)
    symbol_ratio: RatioFilter = Field(default_factory=lambda: RatioFilter(max_ratio=0.25))
    digit_ratio: RatioFilter = Field(default_factory=lambda: RatioFilter(max_ratio=0.25))
    repeated_lines: RepeatedLinesFilter = Field(default_factory=RepeatedLinesFilter)
    repeated_ngrams: RepeatedNgramsFilter = Field(default_factory=RepeatedNgramsFilter)
    mean_word_length: MeanWordLengthFilter = Field(default_factory=MeanWordLengthFilter)


# ------------------------------------------------------------------------------------------ dedup
class DedupConfig(Section):
    exact: bool = True
    near: bool = True
    shingle: Literal["auto", "words", "chars"] = Field(
        "auto", description="auto: word shingles, character shingles for zh")
    shingle_size: int = Field(5, ge=1, description="words per shingle")
    char_shingle_size: int = Field(5, ge=1, description="characters per shingle (zh, or shingle: chars)")
    num_perm: int = Field(128, ge=4, le=1024)
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of near duplicates")
    bands: int | None = Field(None, ge=1, description="LSH bands; default chosen from threshold and fn_weight")
    fn_weight: float = Field(0.9, gt=0, lt=1, description="weight of missed pairs against spurious candidates "
                             "when choosing bands/rows (datasketch uses 0.5; candidates are verified here, so "
                             "a missed duplicate costs more than a checked one)")
    rows: int | None = Field(None, ge=1, description="rows per band; bands x rows <= num_perm")
    verify: bool = Field(True, description="keep only candidate pairs whose MinHash Jaccard >= threshold")
    max_bucket_pairs: int = Field(64, ge=2, description="larger LSH buckets link members to one representative")
    seed: int | None = Field(None, description="default: the run seed")
    batch_docs: int = Field(2000, ge=1)
    bucket_docs: int = Field(500_000, ge=1, description="documents per hash bucket of the sharded exact/LSH "
                             "stages (buckets = documents / this): bounds each bucket worker's memory")

    @model_validator(mode="after")
    def _bands(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("dedup.bands and dedup.rows go together (or leave both unset)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"dedup.bands x dedup.rows = {self.bands * self.rows} exceeds dedup.num_perm "
                             f"{self.num_perm}")
        return self


# --------------------------------------------------------------------------------------- mixtures
class LengthBucket(Section):
    """Documents of at least ``min_tokens`` tokens (up to the next bucket) are sampled ``weight``
    times as often per token as documents below the first bucket; weight 0 sets them aside."""

    min_tokens: int = Field(..., ge=0)
    weight: float = Field(..., ge=0)


class MixtureEntry(Section):
    source: str | list[str] = Field(..., description="pipeline source name(s), or 'synth' for the "
                                    "synthesized chat data")
    name: str | None = Field(None, description="shard set name; default the source name")
    weight: float | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    lang: list[Literal["zh", "en", "other"]] | None = None
    min_chars: int = Field(0, ge=0)
    max_chars: int | None = Field(None, ge=1)
    length_buckets: list[LengthBucket] | None = Field(
        None, min_length=1, description="up-sample by token length: [{min_tokens, weight}, ...] (one shard set "
        "per bucket, mixture weights scaled by the bucket weight; patentgpt/data/pipeline/mixtures.py)")

    @model_validator(mode="after")
    def _one(self):
        if (self.weight is None) == (self.epochs is None):
            raise ValueError("give exactly one of weight and epochs")
        if self.length_buckets is not None:
            edges = [b.min_tokens for b in self.length_buckets]
            if any(a >= b for a, b in zip(edges, edges[1:])):
                raise ValueError(f"length_buckets: min_tokens {edges} must increase")
            if "synth" in self.source_names:
                raise ValueError("length_buckets: not for the synthesized chat data (source synth)")
        if isinstance(self.source, list) and self.name is None:
            raise ValueError("a mixture entry over several sources needs a name")
        return self

    @property
    def source_names(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)

    @property
    def set_name(self) -> str:
        return self.name or self.source_names[0]


class StageSpec(Section):
    sources: list[MixtureEntry] = Field(..., min_length=1)
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self):
        modes = {"weight" if e.weight is not None else "epochs" for e in self.sources}
        if len(modes) > 1:
            raise ValueError("sources: mix of weight and epochs in one stage; use one kind")
        names = [e.set_name for e in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"sources: duplicate shard set names {names}")
        return self


class MixturesConfig(Section):
    tokenizer: str | None = Field(None, description="HF tokenizer directory (required by the mixtures step)")
    stages: dict[str, StageSpec] = Field(default_factory=dict)
    shard_max_tokens: int = Field(1 << 27, ge=1024)
    batch_size: int = Field(256, ge=1, description="documents per tokenizer call")


class CardConfig(Section):
    bins: int = Field(40, ge=5)


# --------------------------------------------------------------------------------------- executor
class RayConfig(Section):
    address: str | None = Field(None, description="'auto' (or ray://host:port) joins a running cluster; "
                                "null starts a local Ray for this command")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (null: all of this machine)")
    max_retries: int = Field(3, ge=0, description="retries of a task whose worker died")


# ------------------------------------------------------------------------------------------- root
def _synth_rewrite_sections():
    """The synth/rewrite config sections, from their modules; a disabled stand-in when a module is absent."""
    try:
        from patentgpt.data.pipeline.synth import SynthConfig
    except ImportError:
        class SynthConfig(Section):  # noqa: D401 - stand-in
            enabled: Literal[False] = False
    try:
        from patentgpt.data.pipeline.rewrite import RewriteConfig
    except ImportError:
        class RewriteConfig(Section):
            enabled: Literal[False] = False
    return SynthConfig, RewriteConfig


SynthConfig, RewriteConfig = _synth_rewrite_sections()


class DataPipelineConfig(Section):
    name: str = "corpus"
    output_dir: str = Field(..., description="every step writes OUTPUT_DIR/<step>/")
    input_root: str = Field(".", description="base of relative source paths")
    num_proc: int = Field(1, ge=1, description="worker processes for per-document steps and tokenization")
    seed: int = 1234
    compress: bool = Field(False, description="intermediate documents as docs.jsonl.gz")
    executor: Literal["local", "ray"] = Field("local", description="local: num_proc processes on this machine; "
                                              "ray: tasks on a Ray cluster (section ray)")
    ray: RayConfig = Field(default_factory=RayConfig)
    partition_docs: int = Field(4096, ge=1, description="documents per task (the unit of resume); outputs do "
                                "not depend on it")
    steps: list[Literal[STEP_ORDER]] = Field(default_factory=lambda: list(STEP_ORDER), min_length=1)
    sources: list[SourceSpec] = Field(..., min_length=1)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    lang: LangConfig = Field(default_factory=LangConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    mixtures: MixturesConfig = Field(default_factory=MixturesConfig)
    card: CardConfig = Field(default_factory=CardConfig)

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"steps: listed twice: {self.steps}")
        order = [STEP_ORDER.index(s) for s in self.steps]
        if order != sorted(order):
            raise ValueError(f"steps: must follow the order {list(STEP_ORDER)}")
        if self.steps[0] != "ingest":
            raise ValueError("steps: must start with ingest")
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"sources: duplicate names {names}")
        for i, src in enumerate(self.sources):
            if src.filters:
                try:
                    merged_filters(self.filters, src.filters)
                except ConfigError as exc:
                    raise ValueError(f"sources.{i}.filters: {exc}") from None
        known = set(names) | {"synth"}
        for stage, spec in self.mixtures.stages.items():
            for j, entry in enumerate(spec.sources):
                for s in entry.source_names:
                    if s not in known:
                        raise ValueError(f"mixtures.stages.{stage}.sources.{j}.source: unknown source {s!r} "
                                         f"(known: {sorted(known)})")
                if "synth" in entry.source_names and "synth" not in self.steps:
                    raise ValueError(f"mixtures.stages.{stage}.sources.{j}: source 'synth' needs the synth step")
        if "mixtures" in self.steps:
            if not self.mixtures.tokenizer:
                raise ValueError("mixtures.tokenizer: required when the mixtures step runs")
            if not self.mixtures.stages:
                raise ValueError("mixtures.stages: required when the mixtures step runs")
        return self


def merged_filters(base: FiltersConfig, overrides: dict) -> FiltersConfig:
    """``base`` with a source's partial ``filters`` overrides applied (validated)."""
    from patentgpt.config.base import _deep_merge, validate

    return validate(FiltersConfig, _deep_merge(base.model_dump(), overrides), source="filters override")
