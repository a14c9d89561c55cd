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

from patentgpt.config.checks import TOKENIZER_FILES
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


def has_tokenizer(model_dir: str | Path) -> bool:
    return any((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES)


def tokenizer_info(path: str | Path):
    """:class:`~patentgpt.tokenizer.info.TokenizerInfo` (size and pieces' fingerprint) of an HF
    tokenizer directory or a SentencePiece ``.model`` file."""
    from patentgpt.tokenizer.info import TokenizerInfo

    path = Path(path)
    if path.is_file():
        from patentgpt.tokenizer.hf import load_proto

        load_proto(path)  # a clear error when it is not a SentencePiece model
        return TokenizerInfo.from_sentencepiece(path, name=str(path))
    if not path.is_dir():
        raise ConfigError(f"--tokenizer {path}: not found (an HF tokenizer directory or a .model file)")
    if not has_tokenizer(path):
        raise ConfigError(f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    from transformers import AutoTokenizer

    return TokenizerInfo.from_tokenizer(AutoTokenizer.from_pretrained(path), name=str(path))


def check_model_dir(model_dir: str | Path, tokenizer_dir: str | Path | None = None,
                    max_extra_rows: int | None = MAX_EXTRA_ROWS) -> dict:
    """Check an HF model directory against a tokenizer (an HF directory or a ``.model`` file;
    default: the one saved with the model) without loading weights.

    Identity first: when the model directory holds the tokenizer it was trained with, the given
    tokenizer must have the same pieces with the same ids (equal fingerprints), not just as many:
    LLaMA-2 and Mistral both have 32,000 pieces and read each other's ids as garbage. Then size:
    the model must embed every id. Returns sizes, fingerprints and what was compared."""
    vocab = model_dir_vocab(model_dir)
    own = tokenizer_info(model_dir) if has_tokenizer(model_dir) else None
    given = tokenizer_info(tokenizer_dir) if tokenizer_dir is not None else own
    if given is None:
        raise ConfigError(f"{model_dir} has no tokenizer saved with it; pass --tokenizer (a directory or .model)")
    if own is not None and given is not own and not own.same_vocab(given):
        raise VocabMismatchError(
            f"{tokenizer_dir} is not the tokenizer saved with {model_dir}: {given.vocab_size} pieces, fingerprint "
            f"{given.fingerprint} vs {own.vocab_size} pieces, fingerprint {own.fingerprint}. Equal sizes are not "
            f"enough: the model reads every id as its own tokenizer's piece. Use --tokenizer {model_dir}, or "
            f"grow the model to the new tokenizer (`patentgpt model extend-vocab`)")
    try:
        check_vocab(vocab, given.vocab_size, where=f"{model_dir} with tokenizer {tokenizer_dir or model_dir}",
                    max_extra_rows=max_extra_rows, model_hint=str(model_dir),
                    tokenizer_hint=str(tokenizer_dir or "TOKENIZER_DIR"))
    except VocabMismatchError as exc:
        if given is not own:
            raise
        # the tokenizer saved in the model directory is itself the wrong one: do not suggest it
        raise VocabMismatchError(
            f"{model_dir}: the tokenizer saved in the model directory ({own.vocab_size} pieces, fingerprint "
            f"{own.fingerprint}) does not fit the model's {vocab} embedding rows: the directory holds the wrong "
            f"tokenizer. Copy in the tokenizer the model was trained or grown with (e.g. the merged tokenizer "
            f"directory given to extend-vocab) and check again with --tokenizer THAT_DIR") from None
    return {"model_vocab_size": vocab, "tokenizer_size": given.vocab_size, "fingerprint": given.fingerprint,
            "identity": "same pieces as the tokenizer saved with the model" if own is not None
            else "not compared: no tokenizer saved with the model (sizes only)"}
