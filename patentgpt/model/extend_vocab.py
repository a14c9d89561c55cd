"""Grow a pretrained model's embeddings and LM head to a merged vocabulary.

The merged tokenizer's first N pieces must be the model's own (base) tokenizer, piece for
piece: then every id the model was trained on keeps its row and the logits over the base
vocabulary are unchanged on text that uses only base ids. Each new row (input embedding and,
when untied, LM head) starts as the mean of the base model's rows for the base tokenizer's
encoding of the new piece's text, so a new piece first behaves like the pieces it replaces
instead of noise. Pieces with no text to encode (control tokens, reserved placeholders) get the
mean of all base rows; the report counts them.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from patentgpt.config import ConfigError
from patentgpt.model.vocab import check_vocab
from patentgpt.tokenizer.hf import BYTE, NORMAL, USER_DEFINED, load_proto
from patentgpt.tokenizer.merge import PLACEHOLDER_RE, _sp


def find_sp_model(path: str | Path, what: str) -> Path:
    """``path`` itself (a ``.model`` file) or ``path/tokenizer.model``."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "tokenizer.model").is_file():
        return path / "tokenizer.model"
    raise ConfigError(f"{what} {path}: no SentencePiece model (a .model file or a directory with tokenizer.model); "
                      + ("pass --base-tokenizer with the model's original tokenizer" if "base" in what else
                         "pass the directory written by `patentgpt tokenizer merge`"))


def check_prefix(base_proto, new_proto, base_name: str, new_name: str) -> None:
    """Refuse unless the new tokenizer's first len(base) pieces are the base's, id for id."""
    n = len(base_proto.pieces)
    if len(new_proto.pieces) < n:
        raise ConfigError(f"tokenizer {new_name} has {len(new_proto.pieces)} pieces, fewer than the model's "
                          f"tokenizer {base_name} ({n}); it is not a merge of it")
    bad = [i for i, (a, b) in enumerate(zip(base_proto.pieces, new_proto.pieces))
           if a.piece != b.piece or a.type != b.type]
    if bad:
        i = bad[0]
        raise ConfigError(
            f"tokenizer {new_name} is not an extension of the model's tokenizer {base_name}: {len(bad)} of its "
            f"first {n} pieces differ (first at id {i}: {new_proto.pieces[i].piece!r} vs "
            f"{base_proto.pieces[i].piece!r}). Merge into the model's own tokenizer: "
            f"`patentgpt tokenizer merge --base {base_name} --add IP.model --out DIR`")


def new_piece_sources(base_proto, new_proto, start: int) -> tuple[list[list[int]], Counter]:
    """For each id >= ``start`` of the new vocabulary, the base ids whose rows to average
    (empty: use the mean of all base rows), and why some are empty."""
    base_sp = _sp(base_proto, add_dummy_prefix=False, remove_extra_whitespaces=False)
    base_ids = {p.piece: i for i, p in enumerate(base_proto.pieces)}
    unk = base_sp.unk_id()
    sources, fallback = [], Counter()
    for i in range(start, len(new_proto.pieces)):
        p = new_proto.pieces[i]
        if p.piece in base_ids:  # e.g. a byte piece both have
            sources.append([base_ids[p.piece]])
        elif p.type == BYTE:
            fallback["byte_piece_missing_in_base"] += 1
            sources.append([])
        elif p.type not in (NORMAL, USER_DEFINED):
            fallback["control_or_unused"] += 1
            sources.append([])
        elif PLACEHOLDER_RE.match(p.piece):
            fallback["reserved_placeholder"] += 1
            sources.append([])
        else:
            ids = [t for t in base_sp.encode(p.piece.replace("▁", " ")) if t != unk]
            if not ids:
                fallback["unencodable"] += 1
            sources.append(ids)
    return sources, fallback


def _init_rows(weight, n_base: int, start: int, sources: list[list[int]], chunk: int = 4096) -> None:
    """weight[start + k] = mean(weight[sources[k]]) (all base rows' mean when empty), in fp32."""
    import torch

    with torch.no_grad():
        base = weight[:n_base]
        mean = base.float().mean(0)
        for lo in range(0, len(sources), chunk):  # bounded temporaries on 7B-sized tables
            part = sources[lo:lo + chunk]
            flat = torch.tensor([t for s in part for t in s], dtype=torch.long)
            seg = torch.tensor([k for k, s in enumerate(part) for _ in s], dtype=torch.long)
            sums = torch.zeros(len(part), base.shape[1], dtype=torch.float32)
            if len(flat):
                sums.index_add_(0, seg, base[flat].float())
            counts = torch.tensor([len(s) for s in part], dtype=torch.float32)
            rows = sums / counts.clamp(min=1).unsqueeze(1)
            rows[counts == 0] = mean
            weight[start + lo:start + lo + len(part)] = rows.to(weight.dtype)


def extend_vocab(model_dir: str | Path, tokenizer: str | Path, out_dir: str | Path, *,
                 base_tokenizer: str | Path | None = None, dtype: str = "auto") -> dict:
    """Grow ``model_dir`` to ``tokenizer``'s vocabulary and publish the result in ``out_dir``
    (safetensors, config with ``vocab_size == len(tokenizer)``, the tokenizer files, and
    ``extend_vocab_report.json``). Returns the report."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from patentgpt.io import atomic_write_json, publish_dir
    from patentgpt.tokenizer.hf import save_hf_tokenizer

    t0 = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"--model {model_dir} is not an HF model directory (no config.json)")
    new_model = find_sp_model(tokenizer, "tokenizer")
    base_model = find_sp_model(base_tokenizer or model_dir, "base tokenizer")
    base_proto, new_proto = load_proto(base_model), load_proto(new_model)
    check_prefix(base_proto, new_proto, str(base_model), str(new_model))
    n_base, target = len(base_proto.pieces), len(new_proto.pieces)

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    old_rows = int(config.vocab_size)
    check_vocab(old_rows, n_base, where=f"model {model_dir} with its tokenizer {base_model}", max_extra_rows=None,
                model_hint=str(model_dir), tokenizer_hint=str(base_model))
    if old_rows > target:
        raise ConfigError(f"model {model_dir} already has {old_rows} rows, more than the tokenizer's {target} "
                          f"pieces; nothing to grow (is it already extended?)")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=False,
                                                 use_safetensors=True)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    out_head = model.get_output_embeddings()
    sources, fallback = new_piece_sources(base_proto, new_proto, n_base)
    model.resize_token_embeddings(target, mean_resizing=False)
    _init_rows(model.get_input_embeddings().weight, n_base, n_base, sources)
    if not tied and out_head is not None:
        _init_rows(model.get_output_embeddings().weight, n_base, n_base, sources)
    model.config.vocab_size = target
    if model.get_input_embeddings().weight.shape[0] != target:
        raise AssertionError("embedding resize did not reach the tokenizer's size")

    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tok_src = Path(tokenizer)
        if tok_src.is_dir() and (tok_src / "tokenizer.json").is_file():
            for f in tok_src.iterdir():
                if f.is_file():
                    shutil.copyfile(f, staging / f.name)
        else:  # a bare .model: export its HF files here
            hf = save_hf_tokenizer(new_model, staging / "_tok")
            for f in hf.iterdir():
                shutil.move(str(f), staging / f.name)
            hf.rmdir()
        tok = AutoTokenizer.from_pretrained(staging)
        saved_vocab = AutoConfig.from_pretrained(staging).vocab_size
        check_vocab(saved_vocab, tok, where=str(out_dir), max_extra_rows=0)
        report = {
            "model": str(model_dir),
            "tokenizer": str(new_model),
            "base_tokenizer": str(base_model),
            "base_pieces": n_base,
            "old_vocab_size": old_rows,
            "new_vocab_size": target,
            "new_rows": target - n_base,
            "tied_embeddings": tied,
            "rows_from_base_pieces": sum(1 for s in sources if s),
            "mean_base_pieces_per_new_row": round(sum(len(s) for s in sources) / max(1, sum(1 for s in sources if s)), 3),
            "rows_from_mean_embedding": sum(fallback.values()),
            "mean_embedding_reasons": dict(fallback),
            "dtype": str(model.dtype).removeprefix("torch."),
            "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(staging / "extend_vocab_report.json", report)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        publish_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
