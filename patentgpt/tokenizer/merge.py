"""Merge an IP SentencePiece model into a base BPE vocabulary at the proto level.

Every base piece keeps its id, type and score, so a model trained with the base tokenizer reads
the merged one's base ids exactly as before. The added model's pieces that the base lacks are
appended in the added model's order (its own priority), with distinct, strictly decreasing
scores below the base's lowest normal-piece score: SentencePiece BPE merges the adjacent pair
whose joined piece has the highest score, so appended pieces only merge after every base merge
has been tried. Appending them all at score 0 (Chinese-LLaMA's way) makes them outrank base
merges and changes existing segmentations far more, and gives ties that SentencePiece and HF
break differently (shared/docs/reference.md).

Appended pieces can still change how base text splits: a merge that the base could not make
becomes available once the joined piece exists. :func:`segmentation_change` measures that on
English text and the merge report states it.

Appended pieces that BPE can never produce from the merged vocabulary are pruned (they would
waste rows, and the HF export must never meet them; see :func:`merge_protos`). The vocabulary is
then trimmed (lowest-priority appended pieces first, single characters last) or padded with
reserved user-defined placeholders ``<|reserved_N|>`` to the requested size, a multiple of 64 by
default (GPU-friendly embedding shapes).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patentgpt.config import ConfigError
from patentgpt.tokenizer.hf import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, load_proto

BPE = 2
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
PLACEHOLDER = "<|reserved_{}|>"
PLACEHOLDER_RE = re.compile(r"^<\|reserved_\d+\|>$")
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")

# Built-in English check text: patent prose, claims, numbers and units, code, markup.
ENGLISH_SAMPLE = """\
A battery management system for a lithium-ion pack monitors the internal impedance of each series-connected cell.
1. A method of manufacturing a semiconductor device, comprising: forming a gate electrode on a substrate; and
depositing an insulating layer over the gate electrode, wherein the insulating layer has a thickness of 5 nm to 50 nm.
2. The method of claim 1, wherein the substrate comprises silicon carbide doped with nitrogen at 1e18 cm^-3.
The present invention relates generally to wireless communication networks, and more particularly to methods for
scheduling uplink transmissions in a cellular system using orthogonal frequency-division multiplexing (OFDM).
BACKGROUND OF THE INVENTION: Conventional neural network accelerators store weights in off-chip DRAM, which limits
throughput and increases energy consumption per inference.
In one embodiment, the controller (12) computes a drift value for every cell and sets a balancing current of up to
150 mA, so that aging cells are not stressed further while healthy cells are balanced.
The court held that the claims were invalid as obvious under 35 U.S.C. 103 in view of the prior art references.
A patent grants its owner the right to exclude others from making, using, selling, or importing the invention.
def forward(self, x):  # returns logits
    return self.head(torch.relu(self.proj(x)))
The quick brown fox jumps over the lazy dog; she sells sea shells by the seashore.
Applicant respectfully traverses the rejection and submits that Smith fails to disclose a "retaining member".
"""


@dataclass
class MergeStats:
    """What the merge did, piece by piece (the first half of ``merge_report.json``)."""

    base_size: int
    added_model_size: int
    base_model_type: str
    added_model_type: str
    appended: int = 0
    appended_user_defined: int = 0
    appended_control: int = 0
    skipped: Counter = field(default_factory=Counter)
    prune_unreachable: bool = False
    pruned_unreachable: int = 0
    pruned_missing_chars: int = 0
    required_chars_added: int = 0  # required characters neither the base nor the added model had
    trimmed: int = 0
    padded: int = 0
    vocab_size: int = 0
    base_min_normal_score: float = 0.0
    appended_score_range: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["skipped"] = dict(self.skipped)
        return out


def _sp(proto, **normalizer):
    """A SentencePieceProcessor for ``proto``, optionally with normalizer fields overridden."""
    import sentencepiece as spm

    if normalizer:
        proto = copy.deepcopy(proto)
        for key, value in normalizer.items():
            setattr(proto.normalizer_spec, key, value)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


def _descending_scores(start: float, n: int) -> list[float]:
    """``n`` scores strictly below ``start`` and strictly decreasing *as float32*, the precision
    SentencePiece stores (LLaMA-2's lowest score is -1e9, where float32 values are 64 apart):
    the step doubles until it is at least twice the float32 spacing at the lowest score."""
    if n == 0:
        return []
    step = 1.0
    while 2.0 * float(np.spacing(np.float32(abs(start) + step * (n + 1)))) > step:
        step *= 2.0
    scores32 = (np.float64(np.float32(start)) - step * np.arange(1, n + 1, dtype=np.float64)).astype(np.float32)
    if not (scores32[0] < np.float32(start) and np.all(np.diff(scores32) < 0)):
        raise AssertionError("could not build strictly decreasing float32 scores")
    return [float(x) for x in scores32]


def _check_mergeable(base, add, base_path, add_path) -> None:
    if base.trainer_spec.model_type != BPE:
        kind = MODEL_TYPES.get(base.trainer_spec.model_type, base.trainer_spec.model_type)
        raise ConfigError(f"base {base_path} is a {kind} SentencePiece model; merging appends BPE pieces "
                          f"and needs a BPE base (LLaMA-2, Mistral/Mixtral)")
    if add.trainer_spec.model_type not in (BPE, 1):
        kind = MODEL_TYPES.get(add.trainer_spec.model_type, add.trainer_spec.model_type)
        raise ConfigError(f"added model {add_path} is a {kind} SentencePiece model; only BPE "
                          f"(or Unigram, appended in its own order) can be merged into a BPE base")


def merge_protos(base_path: str | Path, add_path: str | Path, *, vocab_size: int | None = None,
                 pad_to_multiple: int = 64, prune_unreachable: bool | None = None, required_chars: str = ""):
    """Return ``(merged ModelProto, MergeStats)``.

    ``vocab_size``: ``None`` rounds the merged size up to ``pad_to_multiple``; ``0`` keeps it as
    is (base + appended, no padding: how Chinese-LLaMA's 49,953 comes about); a number trims
    appended pieces (lowest priority first, characters that kept pieces need last) or pads with
    placeholders to exactly that size.
    ``prune_unreachable`` drops appended pieces that BPE can never produce from the merged
    vocabulary (encoding the piece's own text does not yield it: base merges run first and may
    never leave the two halves the added model joined). Dropping them never changes how any text
    is encoded and frees their slots for the next pieces of the added model. ``None`` (auto)
    prunes whenever the merged vocabulary will hold user-defined pieces (symbols or reserved
    placeholders): the HF export then maps a whole segment between symbols that equals a piece
    straight to it, which must agree with SentencePiece, i.e. every piece must be reachable.
    Pruning also drops appended pieces with a character that is not a piece (see
    :func:`missing_char_pieces`), the other way SentencePiece and HF BPE can disagree.
    Only ``vocab_size=0`` with no symbols keeps them (Chinese-LLaMA's 49,953 includes them).
    ``required_chars`` (see :mod:`patentgpt.tokenizer.charset`): every one of these characters
    becomes a single piece; those the base and the added model lack are appended after the added
    model's pieces, and none of them is ever trimmed (lower-priority added pieces make room).
    """
    base, add = load_proto(base_path), load_proto(add_path)
    _check_mergeable(base, add, base_path, add_path)
    base_size = len(base.pieces)
    if vocab_size is not None and vocab_size != 0 and vocab_size < base_size:
        raise ConfigError(f"--vocab-size {vocab_size} is smaller than the base vocabulary ({base_size} pieces in "
                          f"{base_path}); a merge keeps every base piece")
    if pad_to_multiple < 1:
        raise ConfigError(f"--pad-to-multiple must be >= 1, got {pad_to_multiple}")
    stats = MergeStats(base_size=base_size, added_model_size=len(add.pieces),
                       base_model_type=MODEL_TYPES.get(base.trainer_spec.model_type, "?"),
                       added_model_type=MODEL_TYPES.get(add.trainer_spec.model_type, "?"))
    if add.trainer_spec.model_type != BPE:
        stats.notes.append("added model is not BPE: its pieces are appended in id order; some may be "
                           "unreachable by BPE merges (see unreachable_appended)")
    if add.normalizer_spec.name != base.normalizer_spec.name:
        stats.notes.append(f"normalizers differ (base {base.normalizer_spec.name!r}, added "
                           f"{add.normalizer_spec.name!r}); the merged model normalizes as the base")

    present = {p.piece for p in base.pieces}
    base_vocab = set(present)
    normal_scores = [p.score for p in base.pieces if p.type == NORMAL]
    stats.base_min_normal_score = float(min(normal_scores)) if normal_scores else 0.0
    candidates = []  # (piece, type) in the added model's order
    for p in add.pieces:
        if p.piece in present:
            stats.skipped["already_in_base"] += 1
        elif p.type == UNKNOWN:
            stats.skipped["unknown"] += 1
        elif p.type == BYTE:
            # Byte pieces only mean something as the full <0x00>..<0xFF> set of a byte-fallback base.
            stats.skipped["byte_missing_in_base"] += 1
        elif p.type == UNUSED:
            stats.skipped["unused"] += 1
        else:
            candidates.append((p.piece, p.type))
            present.add(p.piece)
    for ch in required_chars:
        if ch not in present:
            candidates.append((ch, NORMAL))
            present.add(ch)
            stats.required_chars_added += 1
    required = set(required_chars)
    if vocab_size and len({c for c in required if c not in base_vocab}) > vocab_size - base_size:
        raise ConfigError(f"required characters missing from the base ({len(required - base_vocab)}) exceed the "
                          f"room the vocabulary size leaves ({vocab_size} - {base_size} base pieces)")
    if stats.skipped.get("byte_missing_in_base"):
        stats.notes.append("the base has no byte-fallback pieces; the added model's were not appended")

    def build(pieces):
        merged = copy.deepcopy(base)
        scores = _descending_scores(stats.base_min_normal_score, len(pieces))
        for (piece, ptype), score in zip(pieces, scores):
            new = merged.pieces.add()
            new.piece, new.type, new.score = piece, ptype, score
        return merged

    exact = vocab_size == 0
    budget = None if (vocab_size is None or exact) else vocab_size - base_size
    if prune_unreachable is None:
        has_user = any(t == USER_DEFINED for _, t in candidates) or any(p.type == USER_DEFINED for p in base.pieces)
        prune_unreachable = has_user or not exact
    stats.prune_unreachable = prune_unreachable
    if prune_unreachable:
        candidates, stats.pruned_unreachable, stats.pruned_missing_chars = _prune(build, candidates, budget, base_vocab,
                                                                                  required)
    candidates, stats.trimmed = _fit(candidates, budget, base_vocab, required)
    merged = build(candidates)
    stats.appended = len(candidates)
    stats.appended_user_defined = sum(t == USER_DEFINED for _, t in candidates)
    stats.appended_control = sum(t == CONTROL for _, t in candidates)
    if candidates:
        stats.appended_score_range = (merged.pieces[base_size].score, merged.pieces[-1].score)

    target = len(merged.pieces)
    if vocab_size is None:
        target = -(-target // pad_to_multiple) * pad_to_multiple
    elif not exact:
        target = vocab_size
    i = 0
    while len(merged.pieces) < target:
        name = PLACEHOLDER.format(i)
        i += 1
        if name in present:
            continue
        new = merged.pieces.add()
        new.piece, new.type, new.score = name, USER_DEFINED, 0.0
        stats.padded += 1
    merged.trainer_spec.vocab_size = len(merged.pieces)
    stats.vocab_size = len(merged.pieces)
    _sp(merged)  # SentencePiece must accept the result
    for i, (a, b) in enumerate(zip(base.pieces, merged.pieces)):
        if (a.piece, a.type, a.score) != (b.piece, b.type, b.score):
            raise AssertionError(f"base piece {i} changed in the merge")
    return merged, stats


def unreachable_pieces(proto, ids) -> list[int]:
    """Ids among ``ids`` that SentencePiece never outputs: encoding the piece's own text (``▁`` as
    a space, no dummy prefix) does not give the piece. Such a piece can never come out inside
    longer text either: neighbours can only take symbols away from its span."""
    sp = _sp(proto, add_dummy_prefix=False, remove_extra_whitespaces=False)
    out = []
    for i in ids:
        p = proto.pieces[i]
        if p.type != NORMAL:
            continue
        if sp.encode(p.piece.replace("▁", " ")) != [i]:
            out.append(i)
    return out


def _fit(candidates, budget, vocab: set[str], required: set[str] = frozenset()):
    """Trim ``candidates`` to ``budget`` pieces, keeping the added model's order.

    Pieces in ``required`` (required characters) are kept first, whatever their place.

    SentencePiece BPE models list their single characters last (lowest scores), yet every longer
    piece is built from them; cutting them first would send those characters to byte fallback
    and leave pieces whose characters are not in the vocabulary. So: take longer pieces in
    priority order, each with the characters it needs that ``vocab`` (the base) lacks, while they
    fit; fill what is left with the remaining characters in their order.
    """
    if budget is None or len(candidates) <= budget:
        return candidates, 0
    index = {piece: j for j, (piece, _) in enumerate(candidates)}
    keep: set[int] = {j for j, (piece, _) in enumerate(candidates) if piece in required}
    for j, (piece, _) in enumerate(candidates):
        if len(keep) >= budget:
            break
        if len(piece) == 1:
            continue
        need = {index[ch] for ch in set(piece) if ch not in vocab and ch in index} - keep
        if len(keep) + 1 + len(need) <= budget:
            keep |= need | {j}
    for j, (piece, _) in enumerate(candidates):
        if len(keep) >= budget:
            break
        keep.add(j)
    return [c for j, c in enumerate(candidates) if j in keep], len(candidates) - len(keep)


def missing_char_pieces(proto, ids) -> list[int]:
    """Ids among ``ids`` of normal pieces with a character that is not itself a piece.

    SentencePiece merges such a character into the longer piece (it looks pieces up by string),
    but a byte-fallback BPE (HF tokenizers) turns it into bytes before merging: the two disagree.
    """
    vocab = {p.piece for p in proto.pieces}
    return [i for i in ids if proto.pieces[i].type == NORMAL and len(proto.pieces[i].piece) > 1
            and any(ch not in vocab for ch in proto.pieces[i].piece)]


def _prune(build, candidates, budget, vocab, required: set[str] = frozenset()):
    """Drop unreachable candidates, and those with characters outside the vocabulary, until the
    ones that fit the budget are all clean. Returns (candidates, unreachable, missing chars)."""
    unreachable = missing = 0
    while True:
        window, _ = _fit(candidates, budget, vocab, required)
        merged = build(window)
        base_size = len(merged.pieces) - len(window)
        ids = range(base_size, len(merged.pieces))
        no_chars = set(missing_char_pieces(merged, ids))
        dead = set(unreachable_pieces(merged, ids)) | no_chars
        if not dead:
            return candidates, unreachable, missing
        missing += len(no_chars)
        unreachable += len(dead - no_chars)
        drop = {window[i - base_size] for i in dead}
        candidates = [c for c in candidates if c not in drop]


def _words(text: str) -> list[str]:
    return [w for w in text.split() if w]


def _is_coarsening(base_pieces: list[str], merged_pieces: list[str]) -> bool:
    """True when every boundary of ``merged_pieces`` is also a boundary of ``base_pieces``
    (positions in UTF-8 bytes: a ``<0xNN>`` byte piece covers one byte)."""
    def cuts(pieces):
        out, pos = set(), 0
        for p in pieces:
            pos += 1 if _BYTE_PIECE.match(p) else len(p.encode("utf-8")) - 2 * p.count("▁")  # ▁: 3 bytes -> 1
            out.add(pos)
        return out

    return cuts(merged_pieces) <= cuts(base_pieces)


def segmentation_change(base_proto, merged_proto, text: str, max_examples: int = 20) -> dict:
    """How the merge changes the segmentation of ``text`` (English, in the report).

    Every whitespace-separated word is encoded alone by both models (as it appears after a space
    in running text); a word counts as changed when its pieces differ. Whole lines are compared
    too, and token totals show whether the change shortens or lengthens the text.
    """
    base_sp, merged_sp = _sp(base_proto), _sp(merged_proto)
    words = _words(text)
    occ_changed, changed_unique, resplit, examples = 0, set(), set(), []
    cache: dict[str, bool] = {}
    base_tokens = merged_tokens = 0
    for w in words:
        if w not in cache:
            a, b = base_sp.encode(w, out_type=str), merged_sp.encode(w, out_type=str)
            cache[w] = a != b
            if a != b:
                changed_unique.add(w)
                if not _is_coarsening(a, b):
                    resplit.add(w)
                if len(examples) < max_examples:
                    examples.append({"word": w, "base": a, "merged": b})
        occ_changed += cache[w]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    lines_changed = 0
    for ln in lines:
        a, b = base_sp.encode(ln), merged_sp.encode(ln)
        base_tokens += len(a)
        merged_tokens += len(b)
        lines_changed += a != b
    return {
        "words": len(words),
        "unique_words": len(cache),
        "words_changed": occ_changed,
        "words_changed_fraction": round(occ_changed / max(1, len(words)), 6),
        "unique_words_changed": len(changed_unique),
        # changed words whose merged pieces are not joins of consecutive base pieces: a merge
        # that only appends lower-scored pieces leaves none (base merges all run first)
        "unique_words_resplit": len(resplit),
        "resplit_examples": sorted(resplit)[:max_examples],
        "lines": len(lines),
        "lines_changed": lines_changed,
        "base_tokens": base_tokens,
        "merged_tokens": merged_tokens,
        "token_change_fraction": round((merged_tokens - base_tokens) / max(1, base_tokens), 6),
        "examples": examples,
    }


def merge_tokenizers(base_path: str | Path, add_path: str | Path, out_dir: str | Path, *,
                     vocab_size: int | None = None, pad_to_multiple: int = 64, prune_unreachable: bool | None = None,
                     check_text: str | Path | None = None, chat_template: str | None | bool = True,
                     required_chars: str | list[str] | None = None) -> dict:
    """Merge, then publish ``out_dir`` atomically: ``tokenizer.model``, the HF tokenizer files
    (``AutoTokenizer.from_pretrained(out_dir)`` encodes as the SentencePiece model) and
    ``merge_report.json``. ``required_chars``: a character set spec (:mod:`.charset`) made single
    pieces; its coverage is in the report. Returns the report."""
    import shutil

    from patentgpt.io import atomic_write_json, publish_dir
    from patentgpt.tokenizer.hf import CHATML_TEMPLATE, save_hf_tokenizer

    from patentgpt.tokenizer.charset import required_char_set, single_piece_coverage

    chars = required_char_set(required_chars)
    merged, stats = merge_protos(base_path, add_path, vocab_size=vocab_size, pad_to_multiple=pad_to_multiple,
                                 prune_unreachable=prune_unreachable, required_chars=chars)
    base = load_proto(base_path)
    text = ENGLISH_SAMPLE
    sources = ["built-in sample"]
    if check_text:
        text += "\n" + Path(check_text).read_text(encoding="utf-8")
        sources.append(str(check_text))
    appended_ids = range(stats.base_size, stats.base_size + stats.appended)
    report = {
        "base": str(base_path),
        "added": str(add_path),
        **stats.as_dict(),
        "base_ids_preserved": True,  # merge_protos asserts it
        "unreachable_appended": len(unreachable_pieces(merged, appended_ids)),
        "appended_with_missing_chars": len(missing_char_pieces(merged, appended_ids)),
        "english_segmentation": {"sources": sources, **segmentation_change(base, merged, text)},
        "required_chars": {"spec": required_chars, **single_piece_coverage(merged, chars)} if chars else None,
        "out_dir": str(out_dir),
    }
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sp_file = staging / "merged.model"
        sp_file.write_bytes(merged.SerializeToString())
        template = CHATML_TEMPLATE if chat_template is True else (chat_template or None)
        hf_dir = save_hf_tokenizer(sp_file, staging / "hf", chat_template=template)
        sp_file.unlink()
        atomic_write_json(hf_dir / "merge_report.json", report)
        publish_dir(hf_dir, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def parse_vocab_size(value: str) -> int | None:
    """CLI value of ``--vocab-size``: a number, ``0``/``none`` (no padding), or ``auto``."""
    v = str(value).strip().lower()
    if v in ("none", "0", "exact"):
        return 0
    if v == "auto":
        return None
    try:
        n = int(v.replace(",", "").replace("_", ""))
    except ValueError:
        raise ConfigError(f"--vocab-size must be a number, 0/none or auto; got {value!r}") from None
    if n < 0:
        raise ConfigError(f"--vocab-size must not be negative; got {n}")
    return n
