"""Lexical + dense: BM25 (bm25s) scores, min-max score interpolation and reciprocal-rank fusion."""

from __future__ import annotations

import re

import numpy as np

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased words; CJK ideographs one per token (Chinese has no spaces to split on)."""
    return _TOKEN.findall(text.lower())


def bm25_scores(queries: list[str], docs: list[str]) -> np.ndarray:
    """(queries, docs) BM25 scores from bm25s (Lucene variant, k1=1.5, b=0.75)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index([tokenize(d) for d in docs], show_progress=False)
    return np.stack([retriever.get_scores(tokenize(q)) for q in queries]).astype(np.float32) if queries \
        else np.zeros((0, len(docs)), dtype=np.float32)


def _minmax(scores: np.ndarray) -> np.ndarray:
    lo, hi = scores.min(axis=1, keepdims=True), scores.max(axis=1, keepdims=True)
    return (scores - lo) / np.maximum(hi - lo, 1e-12)


def interpolate(dense: np.ndarray, lexical: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * dense + (1 - alpha) * BM25, each min-max normalised per query."""
    return alpha * _minmax(dense) + (1.0 - alpha) * _minmax(lexical)


def rrf(*score_matrices: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion: sum over rankings of 1 / (k + rank), rank starting at 1."""
    out = np.zeros_like(score_matrices[0], dtype=np.float64)
    for scores in score_matrices:
        ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1) + 1
        out += 1.0 / (k + ranks)
    return out
