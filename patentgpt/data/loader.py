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
        self.state = SourceState()
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, self.index, epoch])
            self._perm = self.doc_ids[rng.permutation(len(self.doc_ids))]
            self._perm_epoch = epoch
        return self._perm

    def _framed(self, doc_id: int) -> np.ndarray:
        body = self.shards.doc(int(doc_id)).astype(np.int64)
        return np.concatenate([np.asarray(self.prefix, np.int64), body, np.asarray(self.suffix, np.int64)])

    def take(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        filled = 0
        st = self.state
        while filled < n:
            doc = self._framed(self._permutation(st.epoch)[st.pos])
            chunk = doc[st.offset: st.offset + (n - filled)]
            out[filled: filled + len(chunk)] = chunk
            filled += len(chunk)
            st.offset += len(chunk)
            if st.offset >= len(doc):
                st.offset = 0
                st.pos += 1
                if st.pos >= len(self.doc_ids):
                    st.pos = 0
                    st.epoch += 1
        return out


class MixtureLoader:
    """Yields, per optimizer step, this rank's micro-batches of a weighted shard mixture."""

    def __init__(self, sources: list[tuple[str, ShardSet, float]], *, seq_len: int, micro_batch_size: int,
                 grad_accum_steps: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 eos_id: int, bos_id: int | None = None, train_docs: dict[str, np.ndarray] | None = None):
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

    @property
    def global_batch_size(self) -> int:
        return self.micro * self.accum * self.world

    def next_global_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """All sequences of the next global step, with the source index of each."""
        g = self.global_batch_size
        seqs = np.empty((g, self.seq_len), dtype=np.int64)
        src = np.empty(g, dtype=np.int64)
        for j in range(g):
            s = self._source_of(self.seq_index)
            seqs[j] = self.streams[s].take(self.seq_len)
            src[j] = s
            self.seq_index += 1
        return seqs, src

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This rank's ``grad_accum_steps`` micro-batches of the next global step.

        Micro-step ``m`` of rank ``r`` takes global rows ``[(m*world + r)*micro, +micro)``.
        """
        seqs, _ = self.next_global_batch()
        out = []
        for m in range(self.accum):
            start = (m * self.world + self.rank) * self.micro
            ids = torch.from_numpy(seqs[start: start + self.micro].copy())
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
                   bos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out documents framed (BOS, doc, EOS), cut into at most ``max_sequences`` rows:
    (input ids, labels); the last row is padded with EOS whose labels are -100 (not counted)."""
    prefix = np.asarray([bos_id] if bos_id is not None else [], np.int64)
    suffix = np.asarray([eos_id], np.int64)
    parts = [np.concatenate([prefix, d.astype(np.int64), suffix]) for d in docs]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    stream = stream[: max_sequences * seq_len]
    rows = -(-len(stream) // seq_len)
    ids = np.full(rows * seq_len, eos_id, dtype=np.int64)
    labels = np.full(rows * seq_len, -100, dtype=np.int64)
    ids[: len(stream)] = stream
    labels[: len(stream)] = stream
    return ids.reshape(rows, seq_len), labels.reshape(rows, seq_len)
