"""Corpus pipeline throughput, and near-duplicate detection against datasketch's MinHashLSH.

On the real patent text in ../shared/data (English and Chinese; the demo corpus when absent):

1. ``patentgpt data run`` with ingest -> clean -> lang -> filter -> dedup -> mixtures (one stage
   holding every source, tokenized with LLaMA-2's tokenizer exported to an HF directory), at 1
   and 2 processes. Throughput is MB of input JSONL per second of clean + lang + filter + dedup +
   tokenize (ingest, a one-off read, is reported apart). The shards of the two runs must be
   byte-identical. Every run is a fresh process and the two alternate (bench/harness.py), so the
   torch/transformers import is paid by both alike.
2. Near duplicates on the filtered documents plus planted near copies (word edits at several
   rates, so pairs spread over Jaccard 0.6-1.0): our numpy MinHash + LSH against datasketch
   ``MinHash.bulk`` + ``MinHashLSH`` with the same shingles, ``num_perm``, bands and rows (the
   default chosen from the threshold, and the settings of ``--extra-params``). Recall is the share
   of datasketch's candidate pairs that we also report (all of them, and those whose exact Jaccard
   reaches the threshold). The headline speed ratio is like for like through the harness: our
   text -> candidate pairs against datasketch's shingle sets -> candidate pairs (its Python
   shingling excluded, so the ratio is not inflated by it), one process each.

    python bench/data_pipeline.py [--planted 600] [--threshold 0.8] [--num-perm 128] [--extra-params 9x13,16x8]
                                  [--repeats 1] [--speed-repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from harness import compare, emit  # noqa: E402  (bench/ is on sys.path)

SHARED = Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
CONFIG = REPO / "configs" / "data" / "shared_patents.yaml"


def quiet(_msg: str) -> None:
    pass


def tokenizer_dir(work: Path) -> tuple[Path, str]:
    from patentgpt.tokenizer.hf import save_hf_tokenizer

    llama = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
    if llama.is_file():
        return save_hf_tokenizer(llama, work / "llama2_hf"), "llama2 (32,000 pieces)"
    sys.path.insert(0, str(REPO / "tests"))
    from _pipeline_support import build_small_tokenizer

    return build_small_tokenizer(work / "small"), "demo-corpus BPE (2,500 pieces)"


def pipeline_config(out: Path, tok: Path, num_proc: int):
    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig

    if SHARED.is_dir():
        overrides = [f"input_root={SHARED}"]
        names = ["uspto_fulltext", "patentsview", "tfh_abstracts", "historical_ocr", "cn_titles", "cn_abstracts",
                 "cn_claims"]
        cfg_path = CONFIG
    else:
        overrides = [f"input_root={REPO / 'patentgpt/assets/demo_corpus'}"]
        names = ["patents_en", "patents_zh", "ip_law"]
        cfg_path = REPO / "configs" / "data" / "demo.yaml"
    stage = "{stages: {all: {sources: [{source: [%s], name: all, weight: 1.0}]}}}" % ", ".join(names)
    overrides += [f"output_dir={out}", f"num_proc={num_proc}", "steps=[ingest, clean, lang, filter, dedup, mixtures]",
                  f"mixtures={stage}", f"mixtures.tokenizer={tok}"]
    return load_config(DataPipelineConfig, cfg_path, overrides)


def child(spec: dict) -> None:
    """One pipeline run in this fresh process (imports paid here, outside the timed steps); prints JSON."""
    import resource

    from patentgpt.data.pipeline.ingest import input_bytes
    from patentgpt.data.pipeline.runner import run_pipeline
    from patentgpt.data.shards import ShardSet

    cfg = pipeline_config(Path(spec["out"]), Path(spec["tok"]), spec["procs"])
    t0 = time.perf_counter()
    report = run_pipeline(cfg, log=quiet)
    wall = time.perf_counter() - t0
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    shards = ShardSet(Path(spec["out"]) / "mixtures" / "all" / "all")
    print(json.dumps({"input_mb": input_bytes(cfg) / 1e6, "records_read": report["total"]["read"],
                      "docs_kept": report["total"]["kept"], "tokens": shards.num_tokens,
                      "seconds": {s: v["seconds"] for s, v in report["steps"].items()}, "wall": wall,
                      "cpu": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
                      "sha": shards.meta["content_sha256"]}))


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


CORE_STEPS = ("clean", "lang", "filter", "dedup", "mixtures")


def run_throughput(work: Path, tok: Path, repeats: int) -> dict:
    """1 against 2 processes through the harness: every run is a fresh process (so neither pays the
    torch/transformers import the other got for free), the order alternates between rounds."""
    runs: dict[int, list] = {1: [], 2: []}

    def variant(procs: int):
        def run() -> tuple[float, float]:
            res = run_child({"out": str(work / f"run_p{procs}_{len(runs[procs])}"), "tok": str(tok), "procs": procs})
            runs[procs].append(res)
            return res["input_mb"], sum(res["seconds"][s] for s in CORE_STEPS)
        return run

    result = compare({"procs_1": variant(1), "procs_2": variant(2)}, baseline="procs_1", repeats=repeats,
                     warmup=0, unit="MB")
    for procs, rs in runs.items():
        r = rs[-1]
        result[f"procs_{procs}"] = {
            "input_mb": round(r["input_mb"], 2), "records_read": r["records_read"], "docs_kept": r["docs_kept"],
            "tokens": r["tokens"], "seconds": {k: round(v, 2) for k, v in r["seconds"].items()},
            "mb_per_s_by_step": {s: round(r["input_mb"] / r["seconds"][s], 2) for s in CORE_STEPS},
            "wall_seconds_with_ingest": round(r["wall"], 2), "cpu_seconds_all_processes": round(r["cpu"], 2)}
    result["shards_identical_1_vs_2_procs"] = len({r["sha"] for rs in runs.values() for r in rs}) == 1
    return result


# ------------------------------------------------------------------------------ near duplicates
_TOKEN = re.compile(r"[^\W_]+")


def shingle_set(text: str, lang: str, n_words: int, n_chars: int) -> set[str]:
    """The shingles our MinHash hashes, as strings (same normalization: lower case, letters and
    digits, section markers dropped)."""
    from patentgpt.data.pipeline.minhash import prepare

    toks = _TOKEN.findall(prepare(text))
    if lang == "zh":
        toks = [c for t in toks for c in t]
        n = n_chars
    else:
        n = n_words
    if not toks:
        return set()
    if len(toks) < n:
        return {" ".join(toks)}
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def planted_copies(docs: list[dict], count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    long_docs = [d for d in docs if len(d["text"].split()) >= 80 and d["lang"] == "en"]
    out = []
    for k in range(count):
        d = rng.choice(long_docs)
        words = d["text"].split()
        rate = rng.choice([0.002, 0.005, 0.01, 0.02, 0.03, 0.05])
        for _ in range(max(1, int(rate * len(words)))):
            words[rng.randrange(len(words))] = rng.choice(["device", "member", "portion", "said", "unit"])
        out.append({**d, "id": f"PLANTED-{k:05d}", "text": " ".join(words)})
    return out


def near_dup_comparison(docs: list[dict], threshold: float, num_perm: int,
                        params: list[tuple[int, int] | None]) -> list[dict]:
    """One result per (bands, rows) setting (``None``: the default chosen from the threshold)."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from patentgpt.data.pipeline.config import DedupConfig
    from patentgpt.data.pipeline.dedup import Signer, dedup_params
    from patentgpt.data.pipeline.minhash import estimated_jaccard, lsh_candidates

    cfg = DedupConfig(threshold=threshold, num_perm=num_perm)
    texts = [d["text"] for d in docs]
    langs = [d["lang"] for d in docs]

    # ours: text -> signatures (one process); LSH below
    t0 = time.perf_counter()
    signer = Signer(cfg, seed=1, priorities={})
    sigs, has = [], []
    for lo in range(0, len(texts), 2000):
        s, h, _ = signer.sign_texts(texts[lo:lo + 2000], langs[lo:lo + 2000])
        sigs.append(s)
        has.append(h)
    sig = np.concatenate(sigs)
    active = np.concatenate(has)
    t_sig = time.perf_counter() - t0

    # datasketch: the same shingles (built in Python), MinHash.bulk
    t0 = time.perf_counter()
    sets = [shingle_set(t, lang, cfg.shingle_size, cfg.char_shingle_size) for t, lang in zip(texts, langs)]
    t_shingle = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = [i for i, s in enumerate(sets) if s]
    mhs = MinHash.bulk([[x.encode("utf-8") for x in sets[i]] for i in idx], num_perm=num_perm)
    t_ds_minhash = time.perf_counter() - t0

    def exact(p):
        a, b = sets[p[0]], sets[p[1]]
        return len(a & b) / len(a | b)

    results = []
    for setting in params:
        bands, rows = setting if setting is not None else dedup_params(cfg)
        t0 = time.perf_counter()
        cand = lsh_candidates(sig, bands, rows, active, max_bucket_pairs=10**9)
        t_ours = t_sig + time.perf_counter() - t0
        est = estimated_jaccard(sig, cand)
        ours = {(int(a), int(b)) for a, b in cand}
        ours_verified = {(int(a), int(b)) for (a, b), e in zip(cand, est) if e >= threshold}

        t0 = time.perf_counter()
        lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
        with lsh.insertion_session() as session:
            for i, m in zip(idx, mhs):
                session.insert(i, m, check_duplication=False)
        theirs = set()
        for i, m in zip(idx, mhs):
            for j in lsh.query(m):
                if j != i:
                    theirs.add((min(i, j), max(i, j)))
        t_ds = t_ds_minhash + time.perf_counter() - t0
        theirs_true = {p for p in theirs if exact(p) >= threshold}
        bins = {}
        for lo, hi in ((threshold, 0.9), (0.9, 0.95), (0.95, 1.01)):
            sel = {p for p in theirs_true if lo <= exact(p) < hi}
            if sel:
                bins[f"jaccard_{lo:.2f}-{min(hi, 1.0):.2f}"] = {"pairs": len(sel),
                                                                "recall": round(len(sel & ours) / len(sel), 4)}
        results.append({
            "params": {"threshold": threshold, "num_perm": num_perm, "bands": bands, "rows": rows,
                       "chosen": "pipeline default (fn_weight 0.9)" if setting is None else "given",
                       "shingles": f"{cfg.shingle_size} words (zh: {cfg.char_shingle_size} characters)"},
            "docs": len(docs),
            "datasketch_candidate_pairs": len(theirs),
            "our_candidate_pairs": len(ours),
            "recall_of_datasketch_candidate_pairs": round(len(theirs & ours) / max(len(theirs), 1), 4),
            "datasketch_pairs_at_or_above_threshold": len(theirs_true),
            "recall_of_datasketch_pairs_at_or_above_threshold": round(len(theirs_true & ours) / max(len(theirs_true), 1), 4),
            "recall_by_exact_jaccard": bins,
            "our_verified_pairs": len(ours_verified),
            "seconds_ours_text_to_pairs": round(t_ours, 3),
            "seconds_datasketch_minhash_lsh": round(t_ds, 3),
            "seconds_datasketch_python_shingling": round(t_shingle, 3),
            "speed_ratio_vs_datasketch": round(t_ds / t_ours, 2),
            "speed_ratio_vs_datasketch_incl_shingling": round((t_ds + t_shingle) / t_ours, 2),
        })
    return results


def near_dup_speed(docs: list[dict], threshold: float, num_perm: int, repeats: int) -> dict:
    """Like for like through the harness: our text -> candidate pairs (numpy shingling, MinHash,
    LSH) against datasketch's MinHash.bulk + MinHashLSH on shingle sets built beforehand (its
    Python shingling is not counted), same num_perm, bands and rows, one process each."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from patentgpt.data.pipeline.config import DedupConfig
    from patentgpt.data.pipeline.dedup import Signer, dedup_params
    from patentgpt.data.pipeline.minhash import lsh_candidates

    cfg = DedupConfig(threshold=threshold, num_perm=num_perm)
    bands, rows = dedup_params(cfg)
    texts, langs = [d["text"] for d in docs], [d["lang"] for d in docs]
    sets = [shingle_set(t, lang, cfg.shingle_size, cfg.char_shingle_size) for t, lang in zip(texts, langs)]
    encoded = [(i, [x.encode("utf-8") for x in s]) for i, s in enumerate(sets) if s]

    def ours() -> tuple[float, float]:
        t0 = time.perf_counter()
        signer = Signer(cfg, seed=1, priorities={})
        parts = [signer.sign_texts(texts[lo:lo + 2000], langs[lo:lo + 2000]) for lo in range(0, len(texts), 2000)]
        sig, active = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        lsh_candidates(sig, bands, rows, active, max_bucket_pairs=10**9)
        return len(docs), time.perf_counter() - t0

    def datasketch() -> tuple[float, float]:
        t0 = time.perf_counter()
        mhs = MinHash.bulk([e for _, e in encoded], num_perm=num_perm)
        lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
        with lsh.insertion_session() as session:
            for (i, _), m in zip(encoded, mhs):
                session.insert(i, m, check_duplication=False)
        for m in mhs:
            lsh.query(m)
        return len(docs), time.perf_counter() - t0

    out = compare({"ours_text_to_pairs": ours, "datasketch_sets_to_pairs": datasketch},
                  baseline="datasketch_sets_to_pairs", repeats=repeats, warmup=1, unit="docs")
    out["params"] = {"threshold": threshold, "num_perm": num_perm, "bands": bands, "rows": rows}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planted", type=int, default=600)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--extra-params", default="9x13,16x8",
                    help="more BANDSxROWS settings to compare (comma list; 9x13 is datasketch's own choice)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the 1- vs 2-process pipeline comparison")
    ap.add_argument("--speed-repeats", type=int, default=3, help="rounds of the MinHash speed comparison")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    from patentgpt.data.pipeline.docstore import iter_docs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok, tok_name = tokenizer_dir(work)
        throughput = run_throughput(work, tok, args.repeats)
        docs = list(iter_docs(work / "run_p1_0" / "filter" / "docs.jsonl"))
        docs += planted_copies(docs, args.planted, seed=0)
        speed = near_dup_speed(docs, args.threshold, args.num_perm, args.speed_repeats)
        settings = [None] + [tuple(int(x) for x in p.split("x")) for p in args.extra_params.split(",") if p]
        near = near_dup_comparison(docs, args.threshold, args.num_perm, settings)
    ratio = speed["ratio_vs_baseline"]["ours_text_to_pairs"]
    emit({"headline": {"minhash_lsh_speed_ratio_vs_datasketch_excl_its_python_shingling": ratio,
                       "pipeline_mb_per_s": throughput["MB_per_s"],
                       "pipeline_2_vs_1_procs": throughput["ratio_vs_baseline"]["procs_2"]},
          "data": str(SHARED / "patents") if SHARED.is_dir() else "demo corpus", "tokenizer": tok_name,
          "throughput": throughput, "near_duplicate_speed": speed, "near_duplicates_vs_datasketch": near},
         out=args.out)


if __name__ == "__main__":
    main()
