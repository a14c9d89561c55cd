"""Export a SentencePiece BPE model as a transformers tokenizer that encodes exactly as SentencePiece.

transformers' own SP -> fast conversion differs from SentencePiece on runs of spaces (see
shared/docs/reference.md). Here ``tokenizer.json`` is built directly: the SP vocabulary, BPE
merges ordered by the SentencePiece score of the merged piece, byte fallback, ``▁`` for spaces
and a ``▁`` prefix, and the user-defined symbols as added tokens matched before BPE.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from patentgpt.config import ConfigError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# sentencepiece ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def load_proto(sp_model: str | Path):
    """Parse a SentencePiece model file; a clear error when it is not one."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    if not Path(sp_model).exists():
        raise ConfigError(f"{sp_model}: file not found (a SentencePiece .model file is expected)")
    if Path(sp_model).is_dir():
        raise ConfigError(f"{sp_model} is a directory; give the SentencePiece .model file in it")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(sp_model).read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise ConfigError(f"{sp_model} is not a SentencePiece model: {exc}") from None
    if not proto.pieces:
        raise ConfigError(f"{sp_model} is not a SentencePiece model (no pieces)")
    return proto


def _bpe_merges(pieces: list[tuple[str, float, int]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) split of a normal piece into two vocabulary pieces, ranked by the merged
    piece's score (highest first), ties by the ids of the parts."""
    ranked = []
    for piece, score, ptype in pieces:
        if ptype not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[piece], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer_json(sp_model: str | Path):
    """A ``tokenizers.Tokenizer`` equivalent to the SentencePiece BPE model."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    proto = load_proto(sp_model)
    if proto.trainer_spec.model_type != 2:  # BPE
        raise ConfigError(f"{sp_model}: only BPE SentencePiece models are supported")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    unk = next(p for p, _, t in pieces if t == UNKNOWN)
    user = sorted((p for p, _, t in pieces if t == USER_DEFINED), key=len, reverse=True)
    # SentencePiece adds one dummy prefix to the whole text, then cuts user-defined symbols out
    # of it and runs BPE on the rest. So: normalize the whole text, isolate the symbols with a
    # pre-tokenizer, and let a segment that is a whole vocabulary piece (a symbol) map to it.
    tok = Tokenizer(BPE(vocab=vocab, merges=_bpe_merges(pieces, vocab), unk_token=unk, fuse_unk=True,
                        byte_fallback=True, dropout=None, ignore_merges=bool(user)))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    if user:
        alternation = "|".join(re.escape(u) for u in user)
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(alternation), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, _, t in pieces if t in (CONTROL, UNKNOWN)])
    return tok, proto


def save_hf_tokenizer(sp_model: str | Path, out_dir: str | Path, *, chat_template: str | None = CHATML_TEMPLATE,
                      model_max_length: int | None = None) -> Path:
    """Write ``out_dir`` (tokenizer.model, tokenizer.json, tokenizer_config.json) for AutoTokenizer.

    BOS is added to encoded text by default, as LLaMA does; there is no pad token (packing
    needs none; set one where padding is wanted).
    """
    from transformers import PreTrainedTokenizerFast

    from patentgpt.io import publish_dir

    out_dir = Path(out_dir)
    tok, proto = build_tokenizer_json(sp_model)
    by_id = {p.piece: i for i, p in enumerate(proto.pieces)}
    spec = proto.trainer_spec
    names = {
        "unk_token": proto.pieces[spec.unk_id].piece if spec.unk_id >= 0 else None,
        "bos_token": proto.pieces[spec.bos_id].piece if spec.bos_id >= 0 else None,
        "eos_token": proto.pieces[spec.eos_id].piece if spec.eos_id >= 0 else None,
    }
    from tokenizers import processors

    bos = names["bos_token"]
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, by_id[bos])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{k: v for k, v in names.items() if v},
                                   model_max_length=model_max_length or int(1e30), clean_up_tokenization_spaces=False,
                                   add_bos_token=bos is not None, add_eos_token=False)
    if chat_template:
        fast.chat_template = chat_template
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    shutil.copyfile(sp_model, tmp / "tokenizer.model")
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    publish_dir(tmp, out_dir)
    return out_dir


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
