"""MinHash signatures and LSH banding in numpy, a whole batch of documents at a time.

Nothing here loops over shingles in Python:

* a batch of lower-cased texts becomes one array of code points (UTF-32), and a lookup table
  marks letters and digits (any script); everything else separates tokens;
* every token (a word, or a character for Chinese) gets a 64-bit polynomial hash from prefix
  sums: with ``S[k] = sum_{j<k} x_j Q^j`` and ``Q = P^-1 mod 2^64`` (P odd, so invertible), the
  hash of ``x[a:b]`` is ``(S[b] - S[a]) * P^(b-1)``, all in wrapping uint64 arithmetic;
* shingles (``n`` consecutive tokens of one document) are a rolling combination of token hashes;
* permutation ``k`` maps a shingle's 32-bit hash ``x`` to ``(a_k * x + b_k) mod 2^32`` (``a_k``
  odd), computed as a (num_perm, chunk) uint32 block, and a document's signature is the minimum
  over its shingles, reduced with ``np.minimum.reduceat`` along the contiguous axis;
* LSH hashes each band of ``rows`` values to one uint64 key and groups equal keys by sorting.

Seeds fix every constant, so signatures (and the duplicates found) are the same on every run and
for any number of processes.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_P = 0x100000001B3 | 1
_Q = pow(_P, -1, 1 << 64)
_U64 = np.uint64
_trapezoid = getattr(np, "trapezoid", None) or np.trapz
_MARKER = re.compile(r"<\|\w+\|>")
_TABLE_SIZE = 0x30000


def _word_table() -> np.ndarray:
    """True for code points that are letters or digits (what shingles are made of)."""
    table = np.fromiter((chr(i).isalnum() for i in range(_TABLE_SIZE)), dtype=bool, count=_TABLE_SIZE)
    table[0xD800:0xE000] = False
    return table


WORD = _word_table()


def prepare(text: str) -> str:
    """Lower case without section markers: the text dedup compares (punctuation is skipped later)."""
    if "<|" in text:
        text = _MARKER.sub(" ", text)
    return text.lower()


def codepoints(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points, is-word-char mask, document index) of prepared texts joined by NUL."""
    cps = np.frombuffer("\x00".join(texts).encode("utf-32-le"), dtype=np.uint32)
    word = WORD[np.minimum(cps, _TABLE_SIZE - 1)]
    doc = np.zeros(len(cps), dtype=np.int64)
    seps = np.flatnonzero(cps == 0)
    if len(seps):
        doc[seps] = 1
        doc = np.cumsum(doc) - (cps == 0)  # a separator belongs to the document before it
    return cps, word, doc


def exact_digests(cps: np.ndarray, word: np.ndarray, doc: np.ndarray, n_docs: int) -> list[bytes]:
    """blake2b-64 of each document's letters and digits (case, spaces and punctuation ignored)."""
    kept = cps[word]
    kept_doc = doc[word]
    bounds = np.searchsorted(kept_doc, np.arange(n_docs + 1))
    raw = kept.tobytes()
    return [hashlib.blake2b(raw[4 * bounds[i]: 4 * bounds[i + 1]], digest_size=8).digest() for i in range(n_docs)]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads the bits of a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U64(30))
        x = x * _U64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> _U64(27))
        x = x * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def _powers(base: int, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    if n:
        out[0] = 1
    return np.cumprod(out, dtype=np.uint64)  # wraps modulo 2^64


def token_hashes(cps: np.ndarray, word: np.ndarray, doc: np.ndarray, char_mode: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes, document index of each token) from :func:`codepoints` output.

    A token is a maximal run of letters/digits, or in ``char_mode`` a single letter/digit."""
    n = len(cps)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    char_doc = np.asarray(char_mode, dtype=bool)[doc]
    prev_word = np.zeros(n, dtype=bool)
    prev_word[1:] = word[:-1]
    next_word = np.zeros(n, dtype=bool)
    next_word[:-1] = word[1:]
    starts = np.flatnonzero(word & (~prev_word | char_doc))
    ends = np.flatnonzero(word & (~next_word | char_doc)) + 1
    with np.errstate(over="ignore"):
        x = cps.astype(np.uint64) + _U64(1)
        pq = _powers(_Q, n)
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(x * pq, dtype=np.uint64, out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * _powers(_P, n)[ends - 1]
    return _mix(h), doc[starts]


def shingle_hashes(tok: np.ndarray, tok_doc: np.ndarray, n_docs: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, document index) of windows of ``sizes[doc]`` consecutive tokens.

    A document with fewer tokens than its shingle size gets one shingle of all its tokens."""
    if len(tok) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    counts = np.bincount(tok_doc, minlength=n_docs)
    doc_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(tok)) - doc_start[tok_doc]  # token position inside its document
    width = np.minimum(sizes[tok_doc], counts[tok_doc])  # window width of each token's document
    valid = pos + width <= counts[tok_doc]  # windows starting here stay inside the document
    max_w = int(width.max())
    out = np.zeros(len(tok), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(max_w):
            idx = np.minimum(np.arange(len(tok)) + t, len(tok) - 1)
            use = t < width
            out = np.where(use, out * _U64(0x9E3779B97F4A7C15) + tok[idx], out)
    keep = np.flatnonzero(valid)
    return _mix(out[keep] ^ width[keep].astype(np.uint64)), tok_doc[keep]


class MinHasher:
    """Signatures of ``num_perm`` 32-bit minima; same seed, same signatures.

    Permutation ``k`` is ``(a_k * x + b_k) mod 2^32`` of a shingle's 32-bit hash ``x`` (``a_k``
    odd, so a bijection): 32-bit arithmetic is several times faster than 64-bit in numpy, and on
    well-mixed hashes the Jaccard estimates are unbiased with the textbook variance (checked in
    the tests against exact Jaccard)."""

    def __init__(self, num_perm: int, seed: int, chunk_rows: int = 1 << 16):
        rng = np.random.default_rng([seed, 0x6D696E68])
        self.a = (rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64) | _U64(1)).astype(np.uint32)
        self.b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)
        self.num_perm = num_perm
        self.chunk_rows = chunk_rows

    def signatures(self, sh: np.ndarray, sh_doc: np.ndarray, n_docs: int) -> np.ndarray:
        """(n_docs, num_perm) uint32; a document without shingles keeps all 0xFFFFFFFF."""
        sig = np.full((self.num_perm, n_docs), np.iinfo(np.uint32).max, dtype=np.uint32)
        x32 = (sh >> _U64(32)).astype(np.uint32)
        a, b = self.a[:, None], self.b[:, None]
        with np.errstate(over="ignore"):
            for lo in range(0, len(sh), self.chunk_rows):
                x = x32[lo: lo + self.chunk_rows]
                d = sh_doc[lo: lo + self.chunk_rows]
                v = a * x[None, :]
                v += b
                starts = np.concatenate([[0], np.flatnonzero(np.diff(d)) + 1])
                part = np.minimum.reduceat(v, starts, axis=1)
                docs = d[starts]
                sig[:, docs] = np.minimum(sig[:, docs], part)
        return np.ascontiguousarray(sig.T)


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false-positive and false-negative areas of the LSH
    S-curve around ``threshold`` (the rule datasketch's MinHashLSH uses)."""
    xs = np.linspace(0.0, 1.0, 2001)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - xs ** r) ** b
            lo, hi = xs <= threshold, xs >= threshold
            fp = _trapezoid(p[lo], xs[lo])
            fn = _trapezoid(1.0 - p[hi], xs[hi])
            err = fp_weight * fp + fn_weight * fn
            if err < best_err - 1e-15:
                best, best_err = (b, r), err
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: each band's ``rows`` signature values hashed to one key (seeded by the band)."""
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = sig[:, band * rows:(band + 1) * rows].astype(np.uint64)
            key = np.full(sig.shape[0], band, dtype=np.uint64)
            for c in range(rows):
                key = _mix(key * _U64(0x9E3779B97F4A7C15) + block[:, c])
            out[:, band] = key
    return out


def bucket_pairs(band: np.ndarray, key: np.ndarray, ids: np.ndarray, max_bucket_pairs: int = 64) -> np.ndarray:
    """Candidate pairs (i < j, (m, 2) int64, sorted, unique) of documents ``ids`` sharing a
    ``(band, key)`` bucket. Buckets larger than ``max_bucket_pairs`` link each member to the
    bucket's first (lowest id) member only (enough for clustering, and it keeps a bucket of
    thousands of copies from exploding). Rows may come in any order: the pairs depend only on
    which ids share which bucket, so any partitioning of the rows by ``(band, key)`` gives the same."""
    if len(ids) < 2:
        return np.zeros((0, 2), np.int64)
    order = np.lexsort((ids, key, band))
    b, k, i = band[order], key[order], ids[order].astype(np.int64)
    brk = np.flatnonzero((b[1:] != b[:-1]) | (k[1:] != k[:-1])) + 1
    starts = np.concatenate([[0], brk])
    stops = np.concatenate([brk, [len(i)]])
    sizes = stops - starts
    found = []
    two = starts[sizes == 2]  # the common case, vectorized
    if len(two):
        found.append(np.stack([i[two], i[two + 1]], axis=1))
    for s, e in zip(starts[sizes > 2], stops[sizes > 2]):
        members = i[s:e]
        if len(members) <= max_bucket_pairs:
            a, c = np.triu_indices(len(members), 1)
            found.append(np.stack([members[a], members[c]], axis=1))
        else:
            found.append(np.stack([np.full(len(members) - 1, members[0]), members[1:]], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return unique_pairs(np.concatenate(found))


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Sorted unique rows of an (m, 2) int64 array of pairs."""
    if not len(pairs):
        return np.zeros((0, 2), np.int64)
    n = int(pairs.max()) + 1
    code = np.unique(pairs[:, 0].astype(np.int64) * n + pairs[:, 1])
    return np.stack([code // n, code % n], axis=1)


def lsh_candidates(sig: np.ndarray, bands: int, rows: int, active: np.ndarray | None = None,
                   max_bucket_pairs: int = 64) -> np.ndarray:
    """Candidate pairs (i < j, as an (m, 2) int64 array, sorted, unique) sharing a band, among
    the ``active`` rows of ``sig`` (all of one array in memory; the pipeline's sharded path sends
    the same band keys through :func:`bucket_pairs` bucket by bucket)."""
    idx = np.arange(sig.shape[0]) if active is None else np.flatnonzero(active)
    if len(idx) < 2:
        return np.zeros((0, 2), np.int64)
    keys = band_keys(sig[idx], bands, rows)
    band = np.broadcast_to(np.arange(bands, dtype=np.int64), keys.shape).ravel()
    ids = np.broadcast_to(idx[:, None], keys.shape).ravel()
    return bucket_pairs(band, keys.ravel(), ids, max_bucket_pairs)


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    if not len(pairs):
        return np.zeros(0)
    out = np.empty(len(pairs))
    for lo in range(0, len(pairs), 1 << 16):
        p = pairs[lo: lo + (1 << 16)]
        out[lo: lo + len(p)] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)
    return out
