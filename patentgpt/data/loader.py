"""Weighted mixture of shard sets, packed into fixed-length sequences, resumable exactly.

Every rank computes the same global stream of sequences and keeps only its own, so:

* the batch a global step sees does not depend on the number of data-parallel ranks
  (a 1-process run and a 2-process run with the same global batch train on the same data);
* the loader state is global (a sequence counter and one cursor per source) and a run can
  resume on a different data-parallel size;
* the same seed gives the same stream.

Each source is a stream of its documents in a per-epoch seeded permutation, each document
followed by EOS (and preceded by BOS when ``add_bos``). Sequence ``i`` of the global stream
is drawn from a source chosen by a seeded generator keyed on ``i``'s block, then filled with
the next ``seq_len`` tokens of that source's stream (documents span sequence boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from patentgpt.data.shards import ShardError, ShardSet

_CHOICE_BLOCK = 4096
IGNORE = -100  # label of a token that is not a target


@dataclass
class SourceState:
    epoch: int = 0
    pos: int = 0  # position in this epoch's permutation
    offset: int = 0  # token offset inside the current (framed) document


class SourceChooser:
    """Which source item ``j`` of a global stream comes from: drawn by weight with a generator keyed
    on ``(seed, j's block)``, so any position can be recomputed without replaying the stream."""

    def __init__(self, probs: np.ndarray, seed: int):
        self.probs, self.seed = probs, seed
        self._block, self._choices = -1, None

    def __call__(self, j: int) -> int:
        block = j // _CHOICE_BLOCK
        if block != self._block:
            rng = np.random.default_rng([self.seed, 7919, block])
            self._choices = rng.choice(len(self.probs), size=_CHOICE_BLOCK, p=self.probs)
            self._block = block
        return int(self._choices[j % _CHOICE_BLOCK])


class SourceStream:
    """An endless, seeded, epoch-shuffled token stream over one shard set."""

    def __init__(self, shards: ShardSet, seed: int, index: int, eos_id: int, bos_id: int | None,
                 doc_ids: np.ndarray | None = None):
        if len(shards) == 0:
            raise ShardError(f"{shards.path} holds no documents")
        self.shards = shards
        # the documents this stream draws from (all, or the training split of a held-out split)
        self.doc_ids = np.arange(len(shards)) if doc_ids is None else np.asarray(doc_ids, dtype=np.int64)
        if len(self.doc_ids) == 0:
            raise ShardError(f"{shards.path}: no documents left for training")
        self.seed = seed
        self.index = index
        self.prefix = [bos_id] if bos_id is not None else []
        self.suffix = [eos_id]
        self._prefix, self._suffix = np.asarray(self.prefix, np.int64), np.asarray(self.suffix, np.int64)
        self.state = SourceState()
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None
        self._cur_key: tuple[int, int] | None = None
        self._cur_body: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, self.index, epoch])
            self._perm = self.doc_ids[rng.permutation(len(self.doc_ids))]
            self._perm_epoch = epoch
        return self._perm

    def _body(self) -> np.ndarray:
        """The current document's tokens (a view into the shard; cached while the cursor is on it)."""
        st = self.state
        key = (st.epoch, st.pos)
        if self._cur_key != key:
            self._cur_body = self.shards.doc(int(self._permutation(st.epoch)[st.pos]))
            self._cur_key = key
        return self._cur_body

    def take(self, n: int, starts: list[int] | None = None) -> np.ndarray:
        """The next ``n`` tokens of the stream. The current document is framed lazily (prefix,
        body, suffix copied piecewise from the shard), so the cost is O(n), not O(document length).
        With ``starts``, the offsets in the result where a framed document begins are appended."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        st = self.state
        pre, suf = self._prefix, self._suffix
        while filled < n:
            body = self._body()
            total = len(pre) + len(body) + len(suf)
            if st.offset == 0 and starts is not None:
                starts.append(filled)
            end = min(total, st.offset + (n - filled))
            # copy framed[st.offset:end] region by region: prefix, body, suffix
            for lo, part in ((0, pre), (len(pre), body), (len(pre) + len(body), suf)):
                a, b = max(st.offset, lo), min(end, lo + len(part))
                if a < b:
                    out[filled + a - st.offset: filled + b - st.offset] = part[a - lo: b - lo]
            filled += end - st.offset
            st.offset = end
            if st.offset >= total:
                st.offset = 0
                st.pos += 1
                if st.pos >= len(self.doc_ids):
                    st.pos = 0
                    st.epoch += 1
        return out


def segment_positions(starts, seq_len: int) -> np.ndarray:
    """``position_ids`` of a packed row: 0, 1, 2, ... restarting at row start and at each ``starts``
    offset (where a document begins)."""
    idx = np.arange(seq_len)
    begin = np.zeros(seq_len, dtype=bool)
    begin[0] = True
    begin[np.asarray(starts, dtype=np.int64)] = True
    return idx - np.maximum.accumulate(np.where(begin, idx, 0))


def document_rows(ids: np.ndarray, starts_per_row: list) -> tuple[np.ndarray, np.ndarray]:
    """(labels, position_ids) of packed rows under document masking: positions restart at each
    document, and a document's first token is not a target (-100), so no loss term predicts
    across a document boundary (attention cannot cross it either)."""
    labels = ids.copy()
    pos = np.empty_like(ids)
    for r, starts in enumerate(starts_per_row):
        pos[r] = segment_positions(starts, ids.shape[1])
        labels[r, [s for s in starts if s > 0]] = IGNORE
    return labels, pos


class MixtureLoader:
    """Yields, per optimizer step, this rank's micro-batches of a weighted shard mixture."""

    def __init__(self, sources: list[tuple[str, ShardSet, float]], *, seq_len: int, micro_batch_size: int,
                 grad_accum_steps: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 eos_id: int, bos_id: int | None = None, train_docs: dict[str, np.ndarray] | None = None,
                 document_masking: bool = False):
        if not sources:
            raise ShardError("no data sources")
        weights = np.asarray([w for _, _, w in sources], dtype=np.float64)
        if (weights <= 0).any():
            raise ShardError("source weights must be positive")
        self.names = [name for name, _, _ in sources]
        self.probs = weights / weights.sum()
        train_docs = train_docs or {}
        self.streams = [SourceStream(s, seed, i, eos_id, bos_id, train_docs.get(name))
                        for i, (name, s, _) in enumerate(sources)]
        self.seq_len = seq_len
        self.micro = micro_batch_size
        self.accum = grad_accum_steps
        self.world = world_size
        self.rank = rank
        self.seed = seed
        self.seq_index = 0
        self._source_of = SourceChooser(self.probs, seed)
        self.document_masking = document_masking
        self._row_starts: list[list[int]] = []  # per row of the last global batch: where documents begin

    @property
    def global_batch_size(self) -> int:
        return self.micro * self.accum * self.world

    def next_global_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """All sequences of the next global step, with the source index of each."""
        g = self.global_batch_size
        seqs = np.empty((g, self.seq_len), dtype=np.int64)
        src = np.empty(g, dtype=np.int64)
        self._row_starts = []
        for j in range(g):
            s = self._source_of(self.seq_index)
            starts = [] if self.document_masking else None
            seqs[j] = self.streams[s].take(self.seq_len, starts)
            self._row_starts.append(starts)
            src[j] = s
            self.seq_index += 1
        return seqs, src

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This rank's ``grad_accum_steps`` micro-batches of the next global step.

        Micro-step ``m`` of rank ``r`` takes global rows ``[(m*world + r)*micro, +micro)``. With
        document masking, batches also carry ``position_ids`` restarting at each document, from which
        transformers builds a block-diagonal causal mask (sdpa / eager) or varlen attention (flash-attn).
        """
        seqs, _ = self.next_global_batch()
        out = []
        for m in range(self.accum):
            start = (m * self.world + self.rank) * self.micro
            ids = seqs[start: start + self.micro].copy()
            if self.document_masking:
                labels, pos = document_rows(ids, self._row_starts[start: start + self.micro])
                out.append({"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                            "position_ids": torch.from_numpy(pos)})
            else:
                ids = torch.from_numpy(ids)
                out.append({"input_ids": ids, "labels": ids.clone()})
        return out

    def state_dict(self) -> dict:
        return {
            "seq_index": self.seq_index,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "sources": {n: vars(s.state).copy() for n, s in zip(self.names, self.streams)},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["seq_len"] != self.seq_len or state["seed"] != self.seed:
            raise ShardError(
                f"loader state was saved with seq_len={state['seq_len']}, seed={state['seed']}; "
                f"this run has seq_len={self.seq_len}, seed={self.seed}")
        missing = set(self.names) - set(state["sources"])
        if missing:
            raise ShardError(f"loader state has no position for sources {sorted(missing)}")
        self.seq_index = int(state["seq_index"])
        for name, stream in zip(self.names, self.streams):
            stream.state = SourceState(**state["sources"][name])


def holdout_split(num_docs: int, fraction: float, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, held-out ids) of a source: a seeded ``fraction`` of its documents (at least
    one) held out; the same seed always holds out the same documents."""
    if fraction <= 0:
        return np.arange(num_docs), np.zeros(0, dtype=np.int64)
    k = max(1, int(round(fraction * num_docs)))
    if k >= num_docs:
        raise ShardError(f"holding out {k} of {num_docs} documents leaves none for training; lower eval.holdout")
    perm = np.random.default_rng([seed, 104729, index]).permutation(num_docs)
    return np.sort(perm[k:]), np.sort(perm[:k])


def pack_documents(docs: list[np.ndarray], seq_len: int, max_sequences: int, *, eos_id: int,
                   bos_id: int | None, document_masking: bool = False) -> dict[str, np.ndarray]:
    """Held-out documents framed (BOS, doc, EOS), cut into at most ``max_sequences`` rows: columns
    ``input_ids``, ``labels`` (the last row is padded with EOS whose labels are -100, not counted) and,
    with ``document_masking``, ``position_ids`` and labels as in training (:func:`document_rows`)."""
    prefix = np.asarray([bos_id] if bos_id is not None else [], np.int64)
    suffix = np.asarray([eos_id], np.int64)
    parts = [np.concatenate([prefix, d.astype(np.int64), suffix]) for d in docs]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    stream = stream[: max_sequences * seq_len]
    rows = -(-len(stream) // seq_len)
    ids = np.full(rows * seq_len, eos_id, dtype=np.int64)
    labels = np.full(rows * seq_len, IGNORE, dtype=np.int64)
    ids[: len(stream)] = stream
    labels[: len(stream)] = stream
    ids, labels = ids.reshape(rows, seq_len), labels.reshape(rows, seq_len)
    if not document_masking:
        return {"input_ids": ids, "labels": labels}
    begins = np.cumsum([0] + [len(p) for p in parts[:-1]])
    begins = np.append(begins[begins < len(stream)], len(stream))  # the padding is a segment of its own
    starts = [[int(b - r * seq_len) for b in begins if r * seq_len <= b < (r + 1) * seq_len] for r in range(rows)]
    masked, pos = document_rows(ids, starts)
    return {"input_ids": ids, "labels": np.where(labels == IGNORE, IGNORE, masked), "position_ids": pos}
