"""What a shard set, a model check or an eval records of a tokenizer: size, special ids and a
fingerprint of its id -> piece table (two tokenizers agree on every id iff their fingerprints do).
Lives in the tokenizer package so that data/ and model/ can both use it without importing each other."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenizerInfo:
    """What a shard set records of the tokenizer that made it."""

    name: str
    vocab_size: int
    fingerprint: str
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer, name: str | None = None) -> "TokenizerInfo":
        """Describe a transformers tokenizer; the fingerprint hashes its id -> piece table."""
        return cls(
            name=name or getattr(tokenizer, "name_or_path", "") or "tokenizer",
            vocab_size=len(tokenizer),
            fingerprint=vocab_fingerprint(tokenizer.get_vocab()),
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
        )

    @classmethod
    def from_sentencepiece(cls, model_file, name: str | None = None) -> "TokenizerInfo":
        """Describe a SentencePiece ``.model`` file; same fingerprint as its HF export."""
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(model_file))
        ids = lambda i: i if i >= 0 else None  # noqa: E731 - SentencePiece says -1 for "none"
        return cls(name=name or str(model_file), vocab_size=sp.get_piece_size(),
                   fingerprint=vocab_fingerprint({sp.id_to_piece(i): i for i in range(sp.get_piece_size())}),
                   bos_id=ids(sp.bos_id()), eos_id=ids(sp.eos_id()), pad_id=ids(sp.pad_id()))

    def same_vocab(self, other: "TokenizerInfo") -> bool:
        return self.fingerprint == other.fingerprint and self.vocab_size == other.vocab_size


def vocab_fingerprint(vocab: dict[str, int]) -> str:
    """16 hex digits identifying an id -> piece table (two tokenizers agree on every id iff equal)."""
    digest = hashlib.sha256()
    for piece, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        digest.update(f"{idx}\t{piece}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]
