"""Model / tokenizer vocabulary agreement, checked at load time by every stage.

The most reported failure with merged vocabularies is a model whose embedding table and the
tokenizer in use disagree: a 32,000-row LLaMA-2 fed ids from a 55,296-piece merged tokenizer
(index errors, or silent garbage on some kernels), or a grown 55,296-row model used with the
base 32,000-piece tokenizer (it never sees its new rows and its generations decode wrongly).
:func:`check_vocab` catches both with a message that says which side is bigger and what to run.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from patentgpt.errors import ConfigError, ShardError

# A model may have more rows than its tokenizer has pieces (padding to a multiple of 64/128,
# reserved rows: Qwen-style models carry a few hundred). More than this means another tokenizer.
MAX_EXTRA_ROWS = 1024


class VocabMismatchError(ConfigError, ShardError):
    """The model's vocab_size and the tokenizer's length disagree.

    A ConfigError (the CLI reports it and exits 2) and a ShardError (what the pretraining checks
    have always raised), so existing handlers of either catch it.
    """


def tokenizer_size(tokenizer) -> int:
    """Number of ids a tokenizer can produce: ``len(tokenizer)`` (added tokens included) or an int."""
    if isinstance(tokenizer, int):
        return tokenizer
    if hasattr(tokenizer, "get_piece_size"):  # sentencepiece.SentencePieceProcessor
        return int(tokenizer.get_piece_size())
    return len(tokenizer)


def check_vocab(model_vocab: int, tokenizer, *, where: str = "model",
                max_extra_rows: int | None = MAX_EXTRA_ROWS, model_hint: str = "MODEL_DIR",
                tokenizer_hint: str = "TOKENIZER_DIR") -> None:
    """Raise :class:`VocabMismatchError` unless the model can embed every id of ``tokenizer``
    (an HF tokenizer, a SentencePieceProcessor or a size) and has at most ``max_extra_rows``
    rows beyond it (``None``: any number)."""
    n, m = tokenizer_size(tokenizer), int(model_vocab)
    if m < n:
        raise VocabMismatchError(
            f"{where}: model vocab_size {m} is smaller than the tokenizer's {n} pieces (the tokenizer is "
            f"bigger by {n - m}; ids >= {m} cannot be embedded). Grow the model to the tokenizer first: "
            f"`patentgpt model extend-vocab --model {model_hint} --tokenizer {tokenizer_hint} --out OUT_DIR`, "
            f"or use the tokenizer the model was trained with")
    if max_extra_rows is not None and m - n > max_extra_rows:
        raise VocabMismatchError(
            f"{where}: model vocab_size {m} is bigger than the tokenizer's {n} pieces by {m - n} (more than "
            f"{max_extra_rows} padding rows): the model was grown for another (merged) tokenizer. Use the "
            f"tokenizer saved with the model (`AutoTokenizer.from_pretrained({model_hint})`), not the base one")


def model_dir_vocab(model_dir: str | Path) -> int:
    """``vocab_size`` from an HF model directory's config.json (text config for multimodal ones)."""
    cfg_file = Path(model_dir) / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{model_dir} is not an HF model directory (no config.json)")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    vocab = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    if not vocab:
        raise ConfigError(f"{cfg_file} has no vocab_size")
    return int(vocab)


def check_model_dir(model_dir: str | Path, tokenizer_dir: str | Path | None = None,
                    max_extra_rows: int | None = MAX_EXTRA_ROWS) -> dict:
    """Check an HF model directory against a tokenizer (default: the one saved beside it) without
    loading weights; returns both sizes."""
    from transformers import AutoTokenizer

    tokenizer_dir = tokenizer_dir or model_dir
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = model_dir_vocab(model_dir)
    check_vocab(vocab, tok, where=f"{model_dir} with tokenizer {tokenizer_dir}", max_extra_rows=max_extra_rows,
                model_hint=str(model_dir), tokenizer_hint=str(tokenizer_dir))
    return {"model_vocab_size": vocab, "tokenizer_size": len(tok)}
