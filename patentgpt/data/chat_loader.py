"""Chat conversations as training rows: assistant-only labels, packing, a resumable loader.

``tokenize_chat`` renders a conversation with the tokenizer's chat template and labels only the
assistant turns (each turn's content and its end-of-turn marker); every other token is -100.

``PackedChatLoader`` turns weighted sources of tokenized conversations into fixed-length rows.
With packing, several conversations share a row; ``position_ids`` restart at 0 for each, which
transformers turns into a block-diagonal causal mask (sdpa / eager) or varlen attention
(flash-attn), so no token attends across conversations. Like the pretraining loader, every rank
computes the same global stream and keeps its own rows, so the data of a step does not depend on
the number of ranks and the state (one cursor per source, the stream position) resumes exactly
on any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from patentgpt.data.loader import IGNORE, SourceChooser
from patentgpt.errors import DataError


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(tokenizer, messages: list[dict]) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(input ids, labels, None) with labels on assistant turns only, or (None, None, reason)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; SFT needs one (the merged IP tokenizer carries ChatML)")
    ids = _encode(tokenizer, render_chat(tokenizer, messages))
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_encode(tokenizer, render_chat(tokenizer, messages[:i], add_generation_prompt=True)))
        upto = _encode(tokenizer, render_chat(tokenizer, messages[: i + 1]))
        if ids[: len(upto)] != upto or start > len(upto):
            return None, None, "template_not_prefix_stable"
        labels[start: len(upto)] = ids[start: len(upto)]
    if not (labels != IGNORE).any():
        return None, None, "no_assistant_tokens"
    return np.asarray(ids, dtype=np.int64), labels, None


@dataclass
class _Cursor:
    epoch: int = 0
    pos: int = 0


class WeightedStream:
    """An endless, seeded stream over weighted sources: item ``j`` of the stream comes from a
    source drawn by weight (a generator keyed on ``j``'s block); within a source, items follow a
    per-epoch seeded permutation. The state is the stream position and one cursor per source."""

    def __init__(self, sources: list[tuple[str, list, float]], seed: int):
        if not sources:
            raise DataError("no data sources")
        for name, items, _ in sources:
            if not items:
                raise DataError(f"source {name!r} has no usable record")
        weights = np.asarray([w for _, _, w in sources], dtype=np.float64)
        self.names = [n for n, _, _ in sources]
        self.items = [i for _, i, _ in sources]
        self.probs = weights / weights.sum()
        self.seed = seed
        self.index = 0
        self.cursors = [_Cursor() for _ in sources]
        self._source_of = SourceChooser(self.probs, seed)
        self._perms: dict = {}

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        key = (s, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != s}
            self._perms[key] = np.random.default_rng([self.seed, s, epoch]).permutation(len(self.items[s]))
        return self._perms[key]

    def peek(self):
        """The next item (not consumed)."""
        s = self._source_of(self.index)
        c = self.cursors[s]
        return self.items[s][int(self._perm(s, c.epoch)[c.pos])]

    def take(self):
        """The next item, consumed."""
        s = self._source_of(self.index)
        item = self.peek()
        c = self.cursors[s]
        c.pos += 1
        if c.pos >= len(self.items[s]):
            c.pos, c.epoch = 0, c.epoch + 1
        self.index += 1
        return item

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed,
                "sources": {n: vars(c).copy() for n, c in zip(self.names, self.cursors)}}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise DataError(f"loader state was saved with seed={state['seed']}; this run has seed={self.seed}")
        missing = set(self.names) - set(state["sources"])
        if missing:
            raise DataError(f"loader state has no position for sources {sorted(missing)}")
        self.index = int(state["index"])
        self.cursors = [_Cursor(**state["sources"][n]) for n in self.names]


def rank_slices(rows: list, micro: int, accum: int, world: int, rank: int) -> list[list]:
    """This rank's micro-batches of a global batch: micro-step ``m`` of rank ``r`` takes global rows
    ``[(m*world + r)*micro, +micro)``."""
    return [rows[(m * world + rank) * micro: (m * world + rank + 1) * micro] for m in range(accum)]


class PackedChatLoader:
    """Per optimizer step, this rank's micro-batches of packed conversations."""

    def __init__(self, sources: list[tuple[str, list[tuple[np.ndarray, np.ndarray]], float]], *, seq_len: int,
                 micro_batch_size: int, grad_accum_steps: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 pad_id: int, packing: bool = True):
        for name, examples, _ in sources:
            too_long = [len(ids) for ids, _ in examples if len(ids) > seq_len]
            if too_long:
                raise DataError(f"chat source {name!r}: {len(too_long)} conversations exceed seq_len {seq_len}")
        self.stream = WeightedStream(sources, seed)
        self.seq_len, self.micro, self.accum = seq_len, micro_batch_size, grad_accum_steps
        self.world, self.rank = world_size, rank
        self.pad_id, self.packing = pad_id, packing

    def _row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        convs, filled = [], 0
        while True:
            x, y = self.stream.peek()
            if convs and (not self.packing or filled + len(x) > self.seq_len):
                break
            convs.append(self.stream.take())
            filled += len(x)
        return fill_row(convs, self.seq_len, self.pad_id)

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        rows = [self._row() for _ in range(self.micro * self.accum * self.world)]
        return [{"input_ids": torch.from_numpy(np.stack([r[0] for r in part])),
                 "labels": torch.from_numpy(np.stack([r[1] for r in part])),
                 "position_ids": torch.from_numpy(np.stack([r[2] for r in part]))}
                for part in rank_slices(rows, self.micro, self.accum, self.world, self.rank)]

    def state_dict(self) -> dict:
        return {**self.stream.state_dict(), "seq_len": self.seq_len, "packing": self.packing}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seq_len", "packing"):
            if state[key] != getattr(self, key):
                raise DataError(f"loader state was saved with {key}={state[key]}; this run has {getattr(self, key)}")
        self.stream.load_state_dict(state)


def fill_row(convs: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int):
    """(ids, labels, position_ids) of one row holding ``convs`` back to back, then padding
    (label -100, positions restarting: a segment of its own)."""
    ids = np.full(seq_len, pad_id, dtype=np.int64)
    labels = np.full(seq_len, IGNORE, dtype=np.int64)
    pos = np.zeros(seq_len, dtype=np.int64)
    filled = 0
    for x, y in convs:
        ids[filled: filled + len(x)] = x
        labels[filled: filled + len(x)] = y
        pos[filled: filled + len(x)] = np.arange(len(x))
        filled += len(x)
    pos[filled:] = np.arange(seq_len - filled)
    return ids, labels, pos


def pack_eval_rows(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int,
                   max_rows: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Held-out conversations packed in order into at most ``max_rows`` rows."""
    rows, convs, filled = [], [], 0
    for x, y in examples:
        if convs and filled + len(x) > seq_len:
            rows.append(fill_row(convs, seq_len, pad_id))
            convs, filled = [], 0
            if len(rows) == max_rows:
                return rows
        convs.append((x, y))
        filled += len(x)
    if convs:
        rows.append(fill_row(convs, seq_len, pad_id))
    return rows
