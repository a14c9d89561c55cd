"""Deduplication across all sources: exact (normalized-text hash), then near (MinHash + LSH).

Two passes over the documents. The first computes, in worker processes, each document's exact
key hash and MinHash signature (:mod:`.minhash`); the parent then decides:

* **exact**: documents whose letters and digits (lower case; punctuation, spaces and section
  markers ignored) have the same 64-bit blake2b digest form a cluster;
* **near**: among the exact survivors, documents sharing an LSH band are candidates, kept when
  their MinHash Jaccard estimate reaches ``threshold`` (``verify``), and joined into clusters
  (connected components).

In every cluster the survivor is the document with the lowest ``(source priority, id, source,
location)`` — a property of the documents, not of their order or the number of processes, so the
same document survives every run. The second pass writes the survivors and rejects the rest as
``exact_dup`` / ``near_dup`` naming the survivor. Every cluster is written to
``dedup_clusters.jsonl`` for inspection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from patentgpt.data.pipeline.config import DataPipelineConfig, DedupConfig
from patentgpt.data.pipeline.minhash import (MinHasher, codepoints, connected_components, estimated_jaccard,
                                             exact_digests, lsh_candidates, optimal_bands, prepare, shingle_hashes,
                                             token_hashes)


@dataclass
class SignatureBatch:
    exact: np.ndarray  # uint64 per doc
    sig: np.ndarray  # (n, num_perm) uint32
    has_shingles: np.ndarray  # bool per doc
    keys: list  # (priority, id, source, loc) per doc
    nrec: np.ndarray  # records per doc


def dedup_params(cfg: DedupConfig) -> tuple[int, int]:
    if cfg.bands is not None:
        return cfg.bands, cfg.rows
    return optimal_bands(cfg.threshold, cfg.num_perm, fp_weight=1.0 - cfg.fn_weight, fn_weight=cfg.fn_weight)


class Signer:
    """Exact hashes and MinHash signatures for batches of documents (one per worker process)."""

    def __init__(self, cfg: DedupConfig, seed: int, priorities: dict[str, int]):
        self.cfg = cfg
        self.hasher = MinHasher(cfg.num_perm, seed)
        self.priorities = priorities

    def char_mode(self, lang: str) -> bool:
        return self.cfg.shingle == "chars" or (self.cfg.shingle == "auto" and lang == "zh")

    def sign_texts(self, texts: list[str], langs: list[str]) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """(signatures, has_shingles, exact digests) of raw texts."""
        cps, word, doc = codepoints([prepare(t) for t in texts])
        modes = [self.char_mode(lang) for lang in langs]
        sizes = np.array([self.cfg.char_shingle_size if m else self.cfg.shingle_size for m in modes], np.int64)
        tok, tok_doc = token_hashes(cps, word, doc, modes)
        sh, sh_doc = shingle_hashes(tok, tok_doc, len(texts), sizes)
        sig = self.hasher.signatures(sh, sh_doc, len(texts))
        has = np.bincount(sh_doc, minlength=len(texts)) > 0
        return sig, has, exact_digests(cps, word, doc, len(texts))

    def sign_lines(self, lines: list[str]) -> SignatureBatch:
        docs = [json.loads(line) for line in lines]
        sig, has, digests = self.sign_texts([d["text"] for d in docs], [d.get("lang", "en") for d in docs])
        exact = np.frombuffer(b"".join(digests), dtype=np.uint64).copy()
        keys = [(self.priorities.get(d["source"], 0), str(d["id"]), d["source"], d["loc"]) for d in docs]
        nrec = np.array([int(d.get("meta", {}).get("records", 1)) for d in docs], np.int64)
        return SignatureBatch(exact, sig, has, keys, nrec)


_SIGNER: Signer | None = None


def init_signer(cfg: DedupConfig, seed: int, priorities: dict[str, int]) -> None:
    global _SIGNER
    _SIGNER = Signer(cfg, seed, priorities)


def sign_chunk(lines: list[str]) -> SignatureBatch:
    return _SIGNER.sign_lines(lines)


@dataclass
class DedupResult:
    status: np.ndarray  # 0 keep, 1 exact_dup, 2 near_dup
    survivor_of: np.ndarray  # index of the doc's survivor (itself when kept)
    jaccard: np.ndarray  # estimated Jaccard to the survivor (near dups), else nan
    clusters: list[dict]
    stats: dict


def decide(batches: list[SignatureBatch], cfg: DedupConfig) -> DedupResult:
    """Exact then near-duplicate clusters over all documents, with deterministic survivors."""
    keys = [k for b in batches for k in b.keys]
    n = len(keys)
    exact = np.concatenate([b.exact for b in batches]) if batches else np.zeros(0, np.uint64)
    sig = np.concatenate([b.sig for b in batches]) if batches else np.zeros((0, cfg.num_perm), np.uint32)
    has = np.concatenate([b.has_shingles for b in batches]) if batches else np.zeros(0, bool)
    # rank[i]: position of doc i in the survivor order (lower wins)
    order = sorted(range(n), key=keys.__getitem__)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    status = np.zeros(n, dtype=np.int8)
    survivor_of = np.arange(n)
    jacc = np.full(n, np.nan)
    clusters: list[dict] = []
    stats = {"docs": n}

    if cfg.exact and n:
        o = np.lexsort((rank, exact))
        ex = exact[o]
        starts = np.concatenate([[0], np.flatnonzero(ex[1:] != ex[:-1]) + 1])
        stops = np.concatenate([starts[1:], [n]])
        big = np.flatnonzero(stops - starts > 1)
        for g in big:
            members = o[starts[g]:stops[g]]
            surv = members[0]
            status[members[1:]] = 1
            survivor_of[members[1:]] = surv
            clusters.append({"kind": "exact", "survivor": int(surv), "members": [int(m) for m in members]})
        stats["exact_clusters"] = int(len(big))
        stats["exact_dups"] = int((status == 1).sum())

    if cfg.near and n:
        bands, rows = dedup_params(cfg)
        active = (status == 0) & has
        cand = lsh_candidates(sig, bands, rows, active, cfg.max_bucket_pairs)
        est = estimated_jaccard(sig, cand)
        pairs = cand[est >= cfg.threshold] if cfg.verify else cand
        comp = connected_components(n, pairs)
        stats.update(bands=bands, rows=rows, candidate_pairs=int(len(cand)), verified_pairs=int(len(pairs)))
        if len(pairs):
            nodes = np.unique(pairs)
            labels = comp[nodes]
            o = np.lexsort((rank[nodes], labels))
            nodes, labels = nodes[o], labels[o]
            starts = np.concatenate([[0], np.flatnonzero(labels[1:] != labels[:-1]) + 1])
            stops = np.concatenate([starts[1:], [len(nodes)]])
            for s, e in zip(starts, stops):
                members = nodes[s:e]
                surv = members[0]
                others = members[1:]
                status[others] = 2
                survivor_of[others] = surv
                jacc[others] = (sig[others] == sig[surv]).mean(axis=1)
                clusters.append({"kind": "near", "survivor": int(surv), "members": [int(m) for m in members],
                                 "jaccard": [1.0] + [round(float(j), 4) for j in jacc[others]]})
        stats["near_clusters"] = sum(1 for c in clusters if c["kind"] == "near")
        stats["near_dups"] = int((status == 2).sum())
    return DedupResult(status, survivor_of, jacc, clusters, stats)


def describe(keys: list, i: int) -> dict:
    _, doc_id, source, loc = keys[i]
    return {"id": doc_id, "source": source, "loc": loc}


def chunk_by_chars(lines, max_chars: int, max_docs: int):
    """Batches of lines bounded by total characters (bounds the signer's memory) and count."""
    batch, size = [], 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def source_priorities(cfg: DataPipelineConfig) -> dict[str, int]:
    return {s.name: s.priority for s in cfg.sources}
