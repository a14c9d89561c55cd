"""Pretraining loader cost on long documents: one 8 x 512 step of ``MixtureLoader`` on a source of
5k-token documents and on one of 500k-token documents, with today's ``SourceStream.take`` (frames
lazily, O(tokens taken)) against the one it replaced (kept here only, as the baseline: it framed,
i.e. copied, the whole document for every chunk it cut, O(document length) per chunk).

Token ids are random (copy cost does not depend on them); shards are written by ``ShardWriter``.
Prints JSON: steps/s and ms per step of both at both lengths, and new/old ratios.

    python bench/loader_take.py [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from harness import compare, emit, timed  # noqa: E402

from patentgpt.data.loader import MixtureLoader, SourceStream  # noqa: E402
from patentgpt.data.shards import ShardSet, ShardWriter, TokenizerInfo  # noqa: E402

TOK = TokenizerInfo(name="bench", vocab_size=32000, fingerprint="bench", bos_id=1, eos_id=2)


class WholeDocumentTake(SourceStream):
    """The ``take`` before issue #10: frame (concatenate, cast) the whole document for each chunk."""

    def take(self, n, starts=None):
        out, filled, st = np.empty(n, dtype=np.int64), 0, self.state
        while filled < n:
            body = self.shards.doc(int(self._permutation(st.epoch)[st.pos])).astype(np.int64)
            doc = np.concatenate([np.asarray(self.prefix, np.int64), body, np.asarray(self.suffix, np.int64)])
            chunk = doc[st.offset: st.offset + (n - filled)]
            out[filled: filled + len(chunk)] = chunk
            filled += len(chunk)
            st.offset += len(chunk)
            if st.offset >= len(doc):
                st.offset, st.pos = 0, st.pos + 1
                if st.pos >= len(self.doc_ids):
                    st.pos, st.epoch = 0, st.epoch + 1
        return out


def make_source(root: Path, doc_len: int, total_tokens: int) -> ShardSet:
    rng = np.random.default_rng(doc_len)
    with ShardWriter(root / f"docs_{doc_len}", TOK) as w:
        for _ in range(max(2, total_tokens // doc_len)):
            w.add(rng.integers(3, 32000, size=doc_len))
    return ShardSet(root / f"docs_{doc_len}")


def loader(shards: ShardSet, old: bool) -> MixtureLoader:
    ml = MixtureLoader([("s", shards, 1.0)], seq_len=512, micro_batch_size=8, grad_accum_steps=1, seed=0,
                       eos_id=2, bos_id=1)
    if old:
        ml.streams = [WholeDocumentTake(shards, 0, 0, 2, 1)]
    return ml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="loader steps per measured call")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for doc_len in (5_000, 500_000):
            shards = make_source(Path(tmp), doc_len, 2_000_000)
            loaders = {"take_lazy": loader(shards, False), "take_whole_document": loader(shards, True)}

            def run(ml):
                return timed(lambda: [ml.next_step() for _ in range(args.steps)] and args.steps)

            res = compare({name: run(ml) for name, ml in loaders.items()}, baseline="take_whole_document",
                          repeats=args.repeats, warmup=1, unit="steps")
            res["ms_per_step"] = {n: round(1000 / r, 3) for n, r in res["steps_per_s"].items()}
            a, b = (ml.streams[0].state for ml in loaders.values())
            assert vars(a) == vars(b)  # both read the same stream
            results[f"docs_{doc_len}_tokens"] = res
    emit({"step": "8 x 512 tokens, one source", "results": results})


if __name__ == "__main__":
    main()
