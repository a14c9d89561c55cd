"""Optional LLM rewriting: any Hugging Face causal LM paraphrases or cleans up documents.

PatentGPT rewrote part of its corpus before pretraining (noisy OCR, terse records) with an LLM.
This step does that with any ``AutoModelForCausalLM``: each selected document's text goes
into a prompt template, generation runs in left-padded batches, the prompt is stripped from
the output, and the generation becomes a new document ``<id>#rw`` whose ``meta.rewritten_from``
names the original.

Selection: ``langs`` restricts which languages are rewritten and ``fraction`` takes a
deterministic subset by a hash of (seed, id), so the same documents are chosen on every run.
Documents not selected pass through untouched. With ``keep_original`` the originals of
rewritten documents are kept as well; without it a rewrite replaces its original, except when
the generation is empty or degenerate: then it is dropped (counted with its reason) and the
original is kept so that no document is lost to a bad generation.

Greedy decoding (``temperature: 0``) is deterministic and independent of the batch size:
left padding with an attention mask gives each row the same positions and logits it would
have alone (tests check batched against one-by-one output). Sampling is seeded per batch
but, as with any batched sampler, depends on how documents are grouped.
"""

from __future__ import annotations

import copy
import hashlib
import re
import string
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Literal

from pydantic import Field, ValidationInfo, field_validator

from patentgpt.config import ConfigError, Section
from patentgpt.model.vocab import check_vocab

LANG_NAMES = {"en": "English", "zh": "Chinese", "other": "the original language"}
PLACEHOLDERS = ("text", "lang")
DEFAULT_PROMPT = (
    "Rewrite the following patent text in clear, fluent {lang}. Keep every technical fact, number "
    "and reference; fix OCR errors and broken sentences; do not add anything.\n\n"
    "Text:\n{text}\n\nRewritten text:\n"
)
# Selected documents are generated in windows of this many batches, sorted by length inside a
# window so a batch pads little, then yielded in input order.
WINDOW_BATCHES = 8


class RewriteConfig(Section):
    """The ``rewrite`` step of a data config."""

    enabled: bool = False
    model: str = Field(default="", validate_default=True)
    prompt_template: str = DEFAULT_PROMPT
    use_chat_template: bool = False
    batch_size: int = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=256, ge=1)
    max_input_tokens: int = Field(default=1024, ge=8)
    temperature: float = Field(default=0.0, ge=0.0)
    seed: int = 0
    trust_remote_code: bool = False
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "float32"
    device: str = "auto"
    langs: list[Literal["zh", "en", "other"]] | None = None
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    keep_original: bool = True

    @field_validator("model")
    @classmethod
    def _model_when_enabled(cls, model: str, info: ValidationInfo) -> str:
        if info.data.get("enabled") and not model.strip():
            raise ValueError("required when rewrite is enabled (an HF model directory or hub id)")
        return model

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as exc:
            raise ValueError(f"malformed template ({exc}); write literal braces as '{{{{' and '}}}}'") from None
        for name in names:
            if name not in PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {{{name}}}; allowed: {{text}}, {{lang}}")
        if "text" not in names:
            raise ValueError("must contain the {text} placeholder")
        return template


@dataclass
class RewriteStats:
    """Counts of one rewrite run, for the step report."""

    docs: int = 0
    selected: int = 0
    rewritten: int = 0
    emitted: int = 0
    truncated_inputs: int = 0
    kept_original_after_drop: int = 0
    generated_tokens: int = 0
    not_selected: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "docs": self.docs,
            "selected": self.selected,
            "rewritten": self.rewritten,
            "emitted": self.emitted,
            "truncated_inputs": self.truncated_inputs,
            "kept_original_after_drop": self.kept_original_after_drop,
            "generated_tokens": self.generated_tokens,
            "not_selected": dict(sorted(self.not_selected.items())),
            "dropped": dict(sorted(self.dropped.items())),
        }


# ----------------------------------------------------------------------------- selection


def _unit_hash(seed: int, doc_id: str) -> float:
    """A stable number in [0, 1) for (seed, id): the same documents are chosen on every run."""
    digest = hashlib.sha256(f"{seed}\x1f{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def selection_reason(doc: dict, cfg: RewriteConfig) -> str | None:
    """Why ``doc`` is not rewritten (no_text, lang_filtered, fraction), or None to rewrite it."""
    text = doc.get("text")
    if not isinstance(text, str) or not text.strip() or not isinstance(doc.get("id"), str):
        return "no_text"
    if cfg.langs is not None and doc.get("lang") not in cfg.langs:
        return "lang_filtered"
    if cfg.fraction < 1.0 and _unit_hash(cfg.seed, doc["id"]) >= cfg.fraction:
        return "fraction"
    return None


# ----------------------------------------------------------------------------- quality of outputs

_WORDS = re.compile(r"\w+", re.UNICODE)


def degenerate_reason(generated: str, source: str) -> str | None:
    """Why a generation is unusable, or None. ``empty``: nothing but whitespace/special tokens;
    ``repetitive``: a long output that compresses more than 10x (one phrase looping, the usual
    failure of greedy decoding); ``copy_of_input``: the source text returned unchanged, which is
    no rewrite (and would be a duplicate)."""
    text = generated.strip()
    if not text or not _WORDS.search(text):
        return "empty"
    raw = text.encode("utf-8")
    if len(raw) >= 200 and len(zlib.compress(raw, 9)) * 10 < len(raw):
        return "repetitive"
    if " ".join(text.split()) == " ".join(source.split()):
        return "copy_of_input"
    return None


# ----------------------------------------------------------------------------- model


def _torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(cfg: RewriteConfig):
    """(model, tokenizer) ready for batched generation: eval mode, left padding, a pad token
    (EOS when the tokenizer has none). A path or hub id that does not load, or a tokenizer
    larger than the model's embedding table, is a configuration error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code,
                                                     dtype=_torch_dtype(cfg.dtype))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"rewrite.model: cannot load {cfg.model!r}: {exc}") from None
    prepare_tokenizer(tokenizer)
    check_vocab(model.get_input_embeddings().weight.shape[0], tokenizer, where="rewrite.model",
                max_extra_rows=None, model_hint=cfg.model, tokenizer_hint=cfg.model)
    if cfg.use_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"rewrite.use_chat_template: the tokenizer of {cfg.model!r} has no chat template")
    return model.to(_device(cfg.device)).eval(), tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (generation continues from the last real token of every row) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError("rewrite.model: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


# ----------------------------------------------------------------------------- prompts


def _render(cfg: RewriteConfig, tokenizer, text: str, lang: str) -> str:
    prompt = cfg.prompt_template.format(text=text, lang=LANG_NAMES.get(lang, LANG_NAMES["other"]))
    if cfg.use_chat_template:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    return prompt


def _adds_special(tokenizer, prompt: str) -> bool:
    """Let the tokenizer add BOS unless the rendered prompt (a chat template) already has it."""
    bos = tokenizer.bos_token
    return not (bos and prompt.startswith(bos))


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=_adds_special(tokenizer, prompt))["input_ids"]


def _text_budget(cfg: RewriteConfig, tokenizer) -> int:
    """Tokens left for the document once the template itself is counted."""
    overhead = len(_prompt_ids(tokenizer, _render(cfg, tokenizer, "", "en")))
    budget = cfg.max_input_tokens - overhead
    if budget < 1:
        raise ConfigError(f"rewrite.max_input_tokens: {cfg.max_input_tokens} leaves no room for text; "
                          f"the prompt template alone takes {overhead} tokens")
    return budget


def _truncate(tokenizer, text: str, budget: int) -> tuple[str, bool]:
    """``text`` cut to at most ``budget`` tokens at a token boundary. A fast tokenizer's offsets
    keep the characters exactly; otherwise the kept ids are decoded. Huge documents are first
    cut to ``budget * 32`` characters (no token is that long) so they are not tokenized whole."""
    if len(text) > budget * 32:
        text, cut = text[: budget * 32], True
    else:
        cut = False
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= budget:
            return text, cut
        return text[: enc["offset_mapping"][budget - 1][1]], True
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return text, cut
    return tokenizer.decode(ids[:budget], skip_special_tokens=True), True


# ----------------------------------------------------------------------------- generation

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def stop_ids(model, tokenizer, cfg: RewriteConfig) -> list[int]:
    """Token ids that end a generation: the model's own generation-config EOS ids (some chat
    models list several), the tokenizer's EOS and, with a chat template, the end-of-turn token.
    Passing only ``tokenizer.eos_token_id`` would override the model's list."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.append(tokenizer.eos_token_id)
    if cfg.use_chat_template:
        vocab = tokenizer.get_vocab()
        ids.extend(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted({i for i in ids if isinstance(i, int)})


def _batch_seed(seed: int, first_id: str) -> int:
    digest = hashlib.sha256(f"{seed}\x1fbatch\x1f{first_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")


def _decode_new(tokenizer, row: list[int], stops: set[int], special: set[int]) -> tuple[str, int]:
    """Generated ids up to the first stop id, special tokens removed, decoded and stripped."""
    kept = []
    for token in row:
        if token in stops:
            break
        if token not in special:
            kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept)


def generate_batch(model, tokenizer, prompt_ids: list[list[int]], cfg: RewriteConfig, *, seed: int = 0,
                   stops: list[int] | None = None) -> list[tuple[str, int]]:
    """Generate for tokenized prompts in one left-padded batch; return (text, new token count)
    per prompt, the prompt cut off. The seed applies inside a forked RNG, so the caller's
    random state is untouched."""
    import torch

    stops = stops if stops is not None else stop_ids(model, tokenizer, cfg)
    enc = tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
    enc = {k: enc[k].to(model.device) for k in ("input_ids", "attention_mask")}
    sampling = cfg.temperature > 0
    kwargs = {"do_sample": True, "temperature": cfg.temperature} if sampling else {"do_sample": False}
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stops, **kwargs)
    special = set(tokenizer.all_special_ids)
    return [_decode_new(tokenizer, row, set(stops), special)
            for row in out[:, enc["input_ids"].shape[1]:].tolist()]


@dataclass
class _Job:
    index: int
    doc: dict
    ids: list[int]


def _jobs(window: list[tuple[int, dict]], cfg: RewriteConfig, tokenizer, budget: int,
          stats: RewriteStats) -> list[_Job]:
    """Tokenized prompts of one window of selected documents (text cut to the budget)."""
    jobs = []
    for index, doc in window:
        text, truncated = _truncate(tokenizer, doc["text"], budget)
        stats.truncated_inputs += truncated
        prompt = _render(cfg, tokenizer, text, doc.get("lang", "other"))
        jobs.append(_Job(index, doc, _prompt_ids(tokenizer, prompt)))
    return jobs


def _run_window(jobs: list[_Job], model, tokenizer, cfg: RewriteConfig, stats: RewriteStats,
                progress, stops: list[int]) -> dict[int, str | None]:
    """Generate for one window (length-sorted batches); index -> usable text or None."""
    results: dict[int, str | None] = {}
    ordered = sorted(jobs, key=lambda j: (len(j.ids), j.index))
    for start in range(0, len(ordered), cfg.batch_size):
        batch = ordered[start:start + cfg.batch_size]
        outputs = generate_batch(model, tokenizer, [j.ids for j in batch], cfg,
                                 seed=_batch_seed(cfg.seed, batch[0].doc["id"]), stops=stops)
        for job, (text, n_tokens) in zip(batch, outputs):
            stats.generated_tokens += n_tokens
            reason = degenerate_reason(text, job.doc["text"])
            if reason:
                stats.dropped[reason] += 1
                results[job.index] = None
            else:
                stats.rewritten += 1
                results[job.index] = text
        progress.update(len(batch))
    return results


def rewritten_doc(doc: dict, text: str, cfg: RewriteConfig) -> dict:
    """The new document: id ``<id>#rw``, the generation as text, provenance in meta
    (``rewritten_from``, ``rewrite_model``, ``original_kept``); other fields are copied."""
    new = copy.deepcopy(doc)
    new["id"] = f"{doc['id']}#rw"
    new["text"] = text
    meta = new.get("meta") if isinstance(new.get("meta"), dict) else {}
    meta["rewritten_from"] = doc["id"]
    meta["rewrite_model"] = cfg.model
    # tells synthesis not to build the same instructions twice from the copied structured fields
    meta["original_kept"] = cfg.keep_original
    new["meta"] = meta
    return new


def _emit(doc: dict, selected: bool, generated: str | None, cfg: RewriteConfig,
          stats: RewriteStats) -> Iterator[dict]:
    if not selected:
        yield doc
    elif generated is None:
        stats.kept_original_after_drop += not cfg.keep_original
        yield doc
    else:
        if cfg.keep_original:
            yield doc
        yield rewritten_doc(doc, generated, cfg)


def rewrite_documents(docs: list[dict], cfg: RewriteConfig, *, stats: RewriteStats | None = None,
                      model=None, tokenizer=None) -> Iterator[dict]:
    """Yield the documents of ``docs`` in order, each selected one followed by (or, without
    ``keep_original``, replaced by) its rewrite. The model loads only if something is selected;
    ``model``/``tokenizer`` may be passed in to reuse a loaded pair. ``stats`` is filled while
    iterating: ``emitted = docs - replaced + rewritten`` and ``selected = rewritten + dropped``."""
    from tqdm.auto import tqdm

    stats = stats if stats is not None else RewriteStats()
    stats.docs += len(docs)
    reasons = [selection_reason(doc, cfg) for doc in docs]
    stats.not_selected.update(r for r in reasons if r)
    selected = [i for i, r in enumerate(reasons) if r is None]
    stats.selected += len(selected)
    if not selected:
        for doc in docs:
            stats.emitted += 1
            yield doc
        return
    if model is None or tokenizer is None:
        model, tokenizer = load_model(cfg)
    else:
        prepare_tokenizer(tokenizer)
    budget = _text_budget(cfg, tokenizer)
    stops = stop_ids(model, tokenizer, cfg)
    window_size = cfg.batch_size * WINDOW_BATCHES
    done = 0  # docs[:done] have been yielded
    with tqdm(total=len(selected), desc="rewrite", unit="doc") as progress:
        for start in range(0, len(selected), window_size):
            window = [(i, docs[i]) for i in selected[start:start + window_size]]
            results = _run_window(_jobs(window, cfg, tokenizer, budget, stats), model, tokenizer, cfg,
                                  stats, progress, stops)
            end = selected[start + window_size] if start + window_size < len(selected) else len(docs)
            for i in range(done, end):
                for out in _emit(docs[i], i in results, results.get(i), cfg, stats):
                    stats.emitted += 1
                    yield out
            done = end
