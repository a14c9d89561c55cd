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
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patentgpt.data.pipeline.config import DataPipelineConfig, DedupConfig
from patentgpt.data.pipeline.docstore import JsonlWriter
from patentgpt.data.pipeline.minhash import (MinHasher, band_keys, bucket_pairs, codepoints, exact_digests,
                                             optimal_bands, prepare, shingle_hashes, token_hashes, unique_pairs)
from patentgpt.data.pipeline.partitions import run_stage


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


# ------------------------------------------------------------------------------ sharded stages
@dataclass
class Layout:
    """What every sharded stage needs to know (small, shipped with each task)."""

    starts: np.ndarray  # first global document index of each signature partition (+ the total last)
    buckets: int  # hash buckets of the exact and LSH stages
    bands: int
    rows: int
    cfg: DedupConfig

    def part_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, ids, side="right") - 1


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def write_signatures(stage_dir: str | Path, p: int, offset: int, batch: SignatureBatch, buckets: int,
                     bands: int, rows: int) -> int:
    """Stage 1 output of one partition: its signatures, keys, and its rows of the exact-hash and
    LSH-band shuffles split into ``buckets`` (by hash), each read later by one bucket task."""
    stage_dir = Path(stage_dir)
    n = len(batch.keys)
    gidx = offset + np.arange(n, dtype=np.int64)
    arrays: dict = {"exact": batch.exact, "has": batch.has_shingles, "nrec": batch.nrec}
    np.save(stage_dir / f".{p:05d}.sig.npy", batch.sig)
    os.replace(stage_dir / f".{p:05d}.sig.npy", stage_dir / f"{p:05d}.sig.npy")
    xb = batch.exact % np.uint64(buckets)
    for b in range(buckets):
        arrays[f"xh{b}"] = batch.exact[xb == b]
        arrays[f"xi{b}"] = gidx[xb == b]
    act = np.flatnonzero(batch.has_shingles)
    keys = band_keys(batch.sig[act], bands, rows).ravel()
    band = np.broadcast_to(np.arange(bands, dtype=np.uint16), (len(act), bands)).ravel()
    ids = np.broadcast_to(gidx[act][:, None], (len(act), bands)).ravel()
    kb = keys % np.uint64(buckets)
    for b in range(buckets):
        m = kb == b
        arrays[f"bk{b}"], arrays[f"bb{b}"], arrays[f"bi{b}"] = keys[m], band[m], ids[m]
    _save_npz(stage_dir / f"{p:05d}.shuffle.npz", **arrays)
    with JsonlWriter(stage_dir / f".{p:05d}.keys.jsonl") as fh:
        for k, r in zip(batch.keys, batch.nrec.tolist()):
            fh.write([*k, r])
    os.replace(stage_dir / f".{p:05d}.keys.jsonl", stage_dir / f"{p:05d}.keys.jsonl")
    return n


_LAYOUT: dict = {}


def init_sign_task(cfg: DedupConfig, seed: int, priorities: dict[str, int], buckets: int) -> None:
    init_signer(cfg, seed, priorities)
    _LAYOUT.update(buckets=buckets, bands_rows=dedup_params(cfg), batch_docs=cfg.batch_docs)


def sign_partition(stage_dir: str, p: int, payload: tuple[int, list[str]]) -> dict:
    """Stage 1 task: sign one partition of lines (in batches bounded by characters)."""
    offset, lines = payload
    parts = [_SIGNER.sign_lines(b) for b in chunk_by_chars(lines, 4_000_000, _LAYOUT["batch_docs"])]
    batch = SignatureBatch(np.concatenate([b.exact for b in parts]), np.concatenate([b.sig for b in parts]),
                           np.concatenate([b.has_shingles for b in parts]), [k for b in parts for k in b.keys],
                           np.concatenate([b.nrec for b in parts]))
    return {"docs": write_signatures(stage_dir, p, offset, batch, _LAYOUT["buckets"], *_LAYOUT["bands_rows"])}


def _gather(sign_dir: str, layout: Layout, names: tuple[str, ...], b: int) -> list[np.ndarray]:
    """Bucket ``b``'s rows of the shuffle arrays ``names`` from every signature partition."""
    cols: list[list] = [[] for _ in names]
    for p in range(len(layout.starts) - 1):
        with np.load(Path(sign_dir) / f"{p:05d}.shuffle.npz") as z:
            for c, name in zip(cols, names):
                c.append(z[f"{name}{b}"])
    return [np.concatenate(c) for c in cols]


def exact_bucket(stage_dir: str, b: int, payload: tuple) -> dict:
    """Stage 2 task: groups of equal exact hashes in bucket ``b`` (members in index order)."""
    sign_dir, layout = payload
    h, i = _gather(sign_dir, layout, ("xh", "xi"), b)
    o = np.lexsort((i, h))
    h, i = h[o], i[o]
    brk = np.flatnonzero(h[1:] != h[:-1]) + 1
    starts = np.concatenate([[0], brk]).astype(np.int64)
    stops = np.concatenate([brk, [len(h)]]).astype(np.int64)
    big = stops - starts > 1
    members = np.concatenate([i[s:e] for s, e in zip(starts[big], stops[big])]) if big.any() else np.zeros(0, np.int64)
    bounds = np.concatenate([[0], np.cumsum((stops - starts)[big])])
    _save_npz(Path(stage_dir) / f"{b:05d}.groups.npz", hashes=h[starts[big]], bounds=bounds, members=members)
    return {"groups": int(big.sum())}


def band_bucket(stage_dir: str, b: int, payload: tuple) -> dict:
    """Stage 3 task: LSH candidate pairs of bucket ``b`` (exact duplicates left out), split by the
    partition of their first document for the verification stage."""
    sign_dir, layout, removed_file = payload
    key, band, ids = _gather(sign_dir, layout, ("bk", "bb", "bi"), b)
    removed = np.load(removed_file)
    if len(removed):
        keep = ~np.isin(ids, removed)
        key, band, ids = key[keep], band[keep], ids[keep]
    cand = bucket_pairs(band, key, ids, layout.cfg.max_bucket_pairs)
    dest = layout.part_of(cand[:, 0]) % layout.buckets if len(cand) else np.zeros(0, np.int64)
    _save_npz(Path(stage_dir) / f"{b:05d}.pairs.npz", **{f"c{v}": cand[dest == v] for v in range(layout.buckets)})
    return {"pairs": int(len(cand))}


class SignatureReader:
    """Signature rows by global index, a partition file at a time (memory-mapped, a few cached)."""

    def __init__(self, sign_dir: str | Path, layout: Layout, cache: int = 4):
        self.dir, self.layout, self.cache, self._open = Path(sign_dir), layout, cache, {}

    def part(self, p: int) -> np.ndarray:
        if p not in self._open:
            if len(self._open) >= self.cache:
                self._open.pop(next(iter(self._open)))
            self._open[p] = np.load(self.dir / f"{p:05d}.sig.npy", mmap_mode="r")
        return self._open[p]

    def jaccard(self, pairs: np.ndarray) -> np.ndarray:
        """MinHash Jaccard estimates of pairs, joined partition pair by partition pair."""
        out = np.zeros(len(pairs))
        if not len(pairs):
            return out
        pa, pb = self.layout.part_of(pairs[:, 0]), self.layout.part_of(pairs[:, 1])
        order = np.lexsort((pb, pa))
        brk = np.flatnonzero((pa[order][1:] != pa[order][:-1]) | (pb[order][1:] != pb[order][:-1])) + 1
        for rows in np.split(order, brk):
            a, c = int(pa[rows[0]]), int(pb[rows[0]])
            sa = self.part(a)[pairs[rows, 0] - self.layout.starts[a]]
            sb = self.part(c)[pairs[rows, 1] - self.layout.starts[c]]
            out[rows] = (sa == sb).mean(axis=1)
        return out


def verify_bucket(stage_dir: str, v: int, payload: tuple) -> dict:
    """Stage 4 task: the unique candidate pairs whose first document falls in bucket ``v``'s
    partitions, kept when their MinHash Jaccard reaches the threshold."""
    sign_dir, layout, bands_dir = payload
    parts = []
    for b in range(layout.buckets):
        with np.load(Path(bands_dir) / f"{b:05d}.pairs.npz") as z:
            parts.append(z[f"c{v}"])
    cand = unique_pairs(np.concatenate(parts)) if parts else np.zeros((0, 2), np.int64)
    kept = cand
    if layout.cfg.verify and len(cand):
        kept = cand[SignatureReader(sign_dir, layout).jaccard(cand) >= layout.cfg.threshold]
    _save_npz(Path(stage_dir) / f"{v:05d}.verified.npz", pairs=kept)
    return {"candidates": int(len(cand)), "verified": int(len(kept))}


def load_keys(sign_dir: str | Path, layout: Layout, ids: np.ndarray) -> dict[int, tuple]:
    """``{index: (priority, id, source, loc, records)}`` of the given documents, reading one
    partition's key file at a time (only partitions holding one of them)."""
    ids = np.unique(ids)
    out: dict[int, tuple] = {}
    parts = layout.part_of(ids)
    for p in np.unique(parts):
        want = set((ids[parts == p] - layout.starts[p]).tolist())
        with open(Path(sign_dir) / f"{p:05d}.keys.jsonl", encoding="utf-8") as fh:
            for k, line in enumerate(fh):
                if k in want:
                    out[int(layout.starts[p]) + k] = tuple(json.loads(line))
    return out


@dataclass
class ShardedDedup:
    """The decisions of :func:`run_sharded`: only duplicates and their clusters, never all documents."""

    removed: np.ndarray  # sorted global indices of removed documents
    status: np.ndarray  # 1 exact_dup / 2 near_dup, per removed document
    survivor: np.ndarray  # survivor index, per removed document
    jaccard: np.ndarray  # near dups: estimated Jaccard to the survivor (nan for exact)
    clusters: list[dict]  # {"kind", "survivor", "members"[, "jaccard"]} in the order of dedup_clusters.jsonl
    keys: dict  # index -> key of every clustered document
    stats: dict
    memory: dict


def run_sharded(executor, work: Path, layout: Layout) -> ShardedDedup:
    """Stages 2-5 over the signatures in ``work/sign``: exact groups per hash bucket, LSH candidates
    per band-hash bucket, verification per partition range, then connected components over the
    verified pairs only (``scipy.sparse.csgraph``), survivors by key, and the removal list."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    cfg = layout.cfg
    sign_dir = str(work / "sign")
    n = int(layout.starts[-1])
    memory: dict = {}
    stats: dict = {"docs": n}
    clusters: list[dict] = []
    removed: dict[int, tuple] = {}  # index -> (status, survivor, jaccard)
    keys: dict = {}
    buckets = range(layout.buckets)

    def sort_members(groups: list[np.ndarray]) -> list[list[int]]:
        keys.update(load_keys(sign_dir, layout, np.concatenate(groups) if groups else np.zeros(0, np.int64)))
        return [sorted(g.tolist(), key=lambda i: keys[i][:4]) for g in groups]

    if cfg.exact and n:
        _, memory["exact"] = run_stage(executor, work / "exact", ((b, (sign_dir, layout)) for b in buckets),
                                         exact_bucket, total=layout.buckets, desc="dedup exact")
        hashes, groups = [], []
        for b in range(layout.buckets):
            with np.load(work / "exact" / f"{b:05d}.groups.npz") as z:
                hashes.append(z["hashes"])
                groups.extend(np.split(z["members"], z["bounds"][1:-1]) if len(z["hashes"]) else [])
        order = np.argsort(np.concatenate(hashes), kind="stable") if groups else []
        for members in sort_members([groups[k] for k in order]):
            for m in members[1:]:
                removed[m] = (1, members[0], float("nan"))
            clusters.append({"kind": "exact", "survivor": members[0], "members": members})
        stats["exact_clusters"] = len(clusters)
        stats["exact_dups"] = len(removed)

    if cfg.near and n:
        removed_file = work / "exact_removed.npy"
        np.save(removed_file, np.array(sorted(removed), dtype=np.int64))
        _, memory["bands"] = run_stage(executor, work / "bands",
                                         ((b, (sign_dir, layout, str(removed_file))) for b in buckets),
                                         band_bucket, total=layout.buckets, desc="dedup LSH buckets")
        res, memory["verify"] = run_stage(executor, work / "verify",
                                          ((v, (sign_dir, layout, str(work / "bands"))) for v in buckets),
                                          verify_bucket, total=layout.buckets, desc="dedup verify")
        pairs = []
        for v in range(layout.buckets):
            with np.load(work / "verify" / f"{v:05d}.verified.npz") as z:
                pairs.append(z["pairs"])
        pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
        stats.update(bands=layout.bands, rows=layout.rows, candidate_pairs=sum(r["candidates"] for r in res),
                     verified_pairs=int(len(pairs)))
        near = []
        if len(pairs):  # components of the graph of verified pairs: its nodes only, not every document
            nodes, inv = np.unique(pairs, return_inverse=True)
            inv = inv.reshape(-1, 2)
            graph = coo_matrix((np.ones(len(inv), np.int8), (inv[:, 0], inv[:, 1])), shape=(len(nodes),) * 2)
            _, labels = connected_components(graph, directed=False)
            o = np.lexsort((nodes, labels))
            brk = np.flatnonzero(labels[o][1:] != labels[o][:-1]) + 1
            comps = sorted(np.split(nodes[o], brk), key=lambda g: int(g[0]))  # by smallest member index
            near = sort_members(comps)
        reader = SignatureReader(sign_dir, layout)
        surv_pairs = np.array([(m, c[0]) for c in near for m in c[1:]], dtype=np.int64).reshape(-1, 2)
        jacc = iter(reader.jaccard(surv_pairs).tolist())
        for members in near:
            js = [round(float(next(jacc)), 4) for _ in members[1:]]
            for m, j in zip(members[1:], js):
                removed[m] = (2, members[0], j)
            clusters.append({"kind": "near", "survivor": members[0], "members": members, "jaccard": [1.0] + js})
        stats["near_clusters"] = len(near)
        stats["near_dups"] = sum(len(c) - 1 for c in near)

    idx = np.array(sorted(removed), dtype=np.int64)
    rows = [removed[i] for i in idx.tolist()]
    return ShardedDedup(idx, np.array([r[0] for r in rows], np.int8), np.array([r[1] for r in rows], np.int64),
                        np.array([r[2] for r in rows], float), clusters, keys, stats, memory)


def make_layout(cfg: DedupConfig, counts: list[int]) -> Layout:
    bands, rows = dedup_params(cfg)
    total = sum(counts)
    return Layout(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                  max(1, -(-total // cfg.bucket_docs)), bands, rows, cfg)


def decide(batches, cfg: DedupConfig, executor=None, work: Path | None = None):
    """Exact then near-duplicate clusters with deterministic survivors, through the sharded stages.

    ``batches``: a list of in-memory :class:`SignatureBatch` (one partition each; gives a dense
    :class:`DedupResult`), or a :class:`Layout` of signatures already written to ``work/sign``
    by the pipeline's signing stage (gives a :class:`ShardedDedup`)."""
    from patentgpt.data.pipeline.executor import LocalExecutor

    executor = executor or LocalExecutor(1)
    if isinstance(batches, Layout):
        return run_sharded(executor, work, batches)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sign").mkdir()
        layout = make_layout(cfg, [len(b.keys) for b in batches])
        for p, b in enumerate(batches):
            write_signatures(work / "sign", p, int(layout.starts[p]), b, layout.buckets, layout.bands, layout.rows)
        res = run_sharded(executor, work, layout)
    n = int(layout.starts[-1])
    status = np.zeros(n, np.int8)
    survivor_of = np.arange(n)
    jacc = np.full(n, np.nan)
    status[res.removed], survivor_of[res.removed], jacc[res.removed] = res.status, res.survivor, res.jaccard
    return DedupResult(status, survivor_of, jacc, res.clusters, res.stats)


def describe(keys, i: int) -> dict:
    """``{id, source, loc}`` of document ``i`` from its key ``(priority, id, source, loc, ...)``."""
    doc_id, source, loc = keys[i][1:4]
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
