"""Train a SentencePiece BPE tokenizer on IP text."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

from patentgpt.config import ConfigError


def train_sentencepiece(*, texts: Iterable[str] | None = None, input_files: Sequence[str | os.PathLike] | None = None,
                        model_prefix: str | os.PathLike, vocab_size: int, user_defined_symbols: Sequence[str] = (),
                        character_coverage: float = 0.9995, model_type: str = "bpe", byte_fallback: bool = True,
                        split_digits: bool = True, input_sentence_size: int = 2_000_000, num_threads: int = 2,
                        max_sentence_length: int = 16384, seed: int = 0, **extra) -> Path:
    """Train on ``texts`` (one document each; split into lines) or on plain-text ``input_files``.

    Normalization is the identity and whitespace is kept as written, so ``decode(encode(x)) == x``
    for any text; digits are split one by one; unknown characters fall back to byte pieces.
    Returns the path of the ``.model`` file. Deterministic for the same input and seed.
    """
    import sentencepiece as spm

    if (texts is None) == (input_files is None):
        raise ConfigError("give exactly one of texts or input_files")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        model_type=model_type, vocab_size=vocab_size, character_coverage=character_coverage,
        byte_fallback=byte_fallback, split_digits=split_digits, user_defined_symbols=list(user_defined_symbols),
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, split_by_whitespace=True, max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True, num_threads=num_threads,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2, **extra)
    spm.set_random_generator_seed(seed)
    if texts is not None:
        lines = [ln for t in texts for ln in t.splitlines() if ln.strip()]
        if not lines:
            raise ConfigError("tokenizer training corpus is empty")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **kwargs)
        data = model.getvalue()
    else:
        files = [str(f) for f in input_files]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"tokenizer training input not found: {missing}")
        if not any(Path(f).stat().st_size for f in files):
            raise ConfigError("tokenizer training corpus is empty")
        tmp_prefix = prefix.with_name(prefix.name + ".tmp")
        spm.SentencePieceTrainer.train(input=files, model_prefix=str(tmp_prefix), **kwargs)
        data = Path(f"{tmp_prefix}.model").read_bytes()  # SentencePiece appends the suffix
        for suffix in (".model", ".vocab"):
            Path(f"{tmp_prefix}{suffix}").unlink(missing_ok=True)
    from patentgpt.io import atomic_open

    out = Path(f"{prefix}.model")
    with atomic_open(out, "wb") as fh:
        fh.write(data)
    return out
