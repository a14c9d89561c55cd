"""IP tokenizer compression: our LLaMA-2 merge vs LLaMA-2 and vs Chinese-LLaMA's merge.

On the real patent text in ../shared/data: hold out ~10% of the records of every source (by a
hash of the publication / patent number, so a patent's claim sentences stay together), train
the IP tokenizer on the rest through the `patentgpt tokenizer train` pipeline, merge it into
LLaMA-2 (<= 55,296 pieces) and count tokens on the held-out Chinese patent text (titles,
abstracts, claims) and English abstracts with

- LLaMA-2's tokenizer (32,000 pieces),
- Chinese-LLaMA's merge (LLaMA-2 + chinese_sp.model, 49,953 pieces, built here),
- ours (SentencePiece; the HF directory is checked to give the same ids).

Targets (issue #3): Chinese >= 3x fewer tokens than LLaMA-2 and >= 25% fewer than Chinese-LLaMA;
English >= 8% fewer than LLaMA-2. ``--big`` also trains on ~1 GB of text made by repeating the
training split in shuffled order (it has only ~20 MB of real text), with sentence sampling, in a
child process, and reports its wall time and peak RSS. Prints JSON.

    python bench/tokenizer_compression.py [--big] [--big-gb 1.0] [--ip-vocab 32000] [--zh-weight 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
PATENTS, TOKENIZERS = SHARED / "patents", SHARED / "tokenizers"
LLAMA2 = TOKENIZERS / "llama2/tokenizer.model"
CHINESE_SP = TOKENIZERS / "chinese-llama/chinese_sp.model"
TARGET_VOCAB = 55296

# source -> (file, record key that groups records, test text of a held-out record, train text field)
SOURCES = {
    "zh_titles": ("zh/cn_titles_ipc.jsonl", lambda r: r["publication_numbers"][0], lambda r: r["title"], "title"),
    "zh_abstracts": ("zh/cn_cpc_abstracts.jsonl", lambda r: r["publication_number"], lambda r: r["text"], "text"),
    "zh_claims": ("zh/cn_claim_sentences.jsonl", lambda r: r["patent_id"], lambda r: r["text"], "text"),
    "en_patentsview": ("en/patentsview_abstracts.jsonl", lambda r: r["publication_number"],
                       lambda r: r["abstract"], "text"),
    "en_tfh": ("en/tfh_annotated_abstracts.jsonl", lambda r: r["patent_number"], lambda r: r["abstract"], "abstract"),
    "en_fulltext": ("en/uspto_fulltext.jsonl", lambda r: r.get("publication_number") or r.get("title"), None, "text"),
}
TEST_SETS = {"zh": ["zh_titles", "zh_abstracts", "zh_claims"], "en": ["en_patentsview", "en_tfh"]}


def _h(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def split_data(work: Path, holdout: float) -> dict:
    """Write train JSONL per source and held-out test texts; held-out = the ``holdout`` share of
    record groups with the smallest hashes (at least one group per source)."""
    info, tests = {}, {lang: {} for lang in TEST_SETS}
    (work / "train").mkdir(parents=True, exist_ok=True)
    for name, (rel, key, test_text, _) in SOURCES.items():
        records = [json.loads(ln) for ln in open(PATENTS / rel, encoding="utf-8") if ln.strip()]
        groups = sorted({str(key(r)) for r in records}, key=_h)
        held = set(groups[:max(1, round(len(groups) * holdout))]) if test_text else set()
        train = [r for r in records if str(key(r)) not in held]
        test = [test_text(r) for r in records if str(key(r)) in held] if test_text else []
        with open(work / "train" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for r in train:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        for lang, names in TEST_SETS.items():
            if name in names:
                tests[lang][name] = [t for t in test if t and t.strip()]
        info[name] = {"records": len(records), "train_records": len(train), "test_records": len(test),
                      "test_chars": sum(len(t) for t in test)}
    return {"sources": info, "tests": tests}


def train_ip(work: Path, args) -> dict:
    """Train + merge through the `patentgpt tokenizer train` pipeline."""
    from patentgpt.config import load_config
    from patentgpt.tokenizer.config import TokenizerTrainConfig, train_from_config

    inputs = []
    for name, (_, _, _, field) in SOURCES.items():
        weight = args.zh_weight if name.startswith("zh") else args.en_weight
        inputs.append({"path": str(work / "train" / f"{name}.jsonl"), "text_field": field, "weight": weight})
    data = {
        "name": "ip", "output_dir": str(work / "ip"), "inputs": inputs, "vocab_size": args.ip_vocab,
        "character_coverage": args.coverage, "seed": 0,
        "merge": {"base": str(LLAMA2), "out_dir": str(work / "merged"), "vocab_size": TARGET_VOCAB},
    }
    return train_from_config(load_config(TokenizerTrainConfig, data=data))


def count_tokens(sp, texts: list[str]) -> int:
    return sum(len(ids) for ids in sp.encode(texts))


def compare(work: Path, tests: dict) -> dict:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from patentgpt.tokenizer.merge import merge_protos

    chinese_llama, _ = merge_protos(LLAMA2, CHINESE_SP, vocab_size=0, prune_unreachable=False)
    sps = {
        "llama2": spm.SentencePieceProcessor(model_file=str(LLAMA2)),
        "chinese_llama": spm.SentencePieceProcessor(model_proto=chinese_llama.SerializeToString()),
        "ours": spm.SentencePieceProcessor(model_file=str(work / "merged" / "tokenizer.model")),
    }
    out = {"vocab_size": {k: sp.get_piece_size() for k, sp in sps.items()}}
    for lang, sets in tests.items():
        per = {}
        for name, texts in sets.items():
            per[name] = {"texts": len(texts), "chars": sum(map(len, texts)),
                         **{k: count_tokens(sp, texts) for k, sp in sps.items()}}
        total = {"texts": sum(p["texts"] for p in per.values()), "chars": sum(p["chars"] for p in per.values()),
                 **{k: sum(p[k] for p in per.values()) for k in sps}}
        out[lang] = {"all": total, **per}
    hf = AutoTokenizer.from_pretrained(work / "merged")
    texts = [t for sets in tests.values() for ts in sets.values() for t in ts]
    out["hf_sp_mismatches"] = sum(a != b for a, b in zip(sps["ours"].encode(texts),
                                                         hf(texts, add_special_tokens=False)["input_ids"]))
    out["hf_checked_texts"] = len(texts)
    return out


def ratios(tokens: dict) -> dict:
    zh, en = tokens["zh"]["all"], tokens["en"]["all"]
    r = {
        "zh_fewer_x_vs_llama2": round(zh["llama2"] / zh["ours"], 3),
        "zh_fewer_vs_chinese_llama": round(1 - zh["ours"] / zh["chinese_llama"], 4),
        "en_fewer_vs_llama2": round(1 - en["ours"] / en["llama2"], 4),
        "zh_titles_fewer_x_vs_llama2": round(tokens["zh"]["zh_titles"]["llama2"] / tokens["zh"]["zh_titles"]["ours"], 3),
        "zh_titles_fewer_vs_chinese_llama": round(
            1 - tokens["zh"]["zh_titles"]["ours"] / tokens["zh"]["zh_titles"]["chinese_llama"], 4),
        "zh_tokens_per_char": {k: round(zh[k] / zh["chars"], 4) for k in ("llama2", "chinese_llama", "ours")},
        "en_tokens_per_char": {k: round(en[k] / en["chars"], 4) for k in ("llama2", "chinese_llama", "ours")},
    }
    r["targets"] = {
        "zh_3x_vs_llama2": r["zh_fewer_x_vs_llama2"] >= 3.0,
        "zh_25pct_vs_chinese_llama": r["zh_fewer_vs_chinese_llama"] >= 0.25,
        "en_8pct_vs_llama2": r["en_fewer_vs_llama2"] >= 0.08,
        "vocab_le_55296": tokens["vocab_size"]["ours"] <= TARGET_VOCAB,
    }
    return r


def make_big_corpus(work: Path, gb: float, seed: int = 0) -> tuple[Path, int]:
    """~``gb`` GB of JSONL: the training split (historical OCR included) repeated in shuffled order."""
    from tqdm.auto import tqdm

    lines = []
    for name in SOURCES:
        lines += [ln for ln in open(work / "train" / f"{name}.jsonl", encoding="utf-8")]
    ocr = PATENTS / "en/historical_us_ocr.jsonl"
    lines += [ln for ln in open(ocr, encoding="utf-8") if ln.strip()]
    target = int(gb * 1e9)
    rng = random.Random(seed)
    path, written = work / "big" / "corpus.jsonl", 0
    path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=target, unit="B", unit_scale=True, desc="write big corpus")
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            rng.shuffle(lines)
            for ln in lines:
                fh.write(ln)
                n = len(ln.encode("utf-8"))
                written += n
                bar.update(n)
                if written >= target:
                    break
    bar.close()
    return path, written


def run_big(work: Path, args) -> dict:
    import yaml

    corpus, size = make_big_corpus(work, args.big_gb)
    cfg = {"name": "big", "output_dir": str(work / "big" / "out"),
           "inputs": [{"path": str(corpus)}], "vocab_size": args.ip_vocab, "character_coverage": args.coverage,
           "input_sentence_size": args.big_sentences, "num_threads": 2}
    cfg_file = work / "big" / "big.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "patentgpt.cli", "tokenizer", "train", "--config", str(cfg_file)],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = json.loads((work / "big" / "out" / "train_report.json").read_text())
    corpus.unlink()
    return {
        "corpus_bytes": size,
        "corpus": "the training split (+ historical OCR) repeated in shuffled order; not new text",
        "documents": report["documents"],
        "sentences_seen": report["sentences_seen"],
        "sentences_sampled": report["sentences_sampled"],
        "vocab_size": report["vocab_size"],
        "seconds": report["seconds"],
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(child_peak, 1),
        "memory_limit_mb": 24 * 1024,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ip-vocab", type=int, default=32000, help="pieces of the IP model before the merge")
    p.add_argument("--zh-weight", type=float, default=2.0, help="times each Chinese sentence counts")
    p.add_argument("--en-weight", type=float, default=1.0)
    p.add_argument("--coverage", type=float, default=1.0, help="character_coverage of the IP model")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--big", action="store_true", help="also train on ~1 GB of text (sampled) and time it")
    p.add_argument("--big-gb", type=float, default=1.0)
    p.add_argument("--big-sentences", type=int, default=500_000, help="sentences sampled from the big corpus")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--work", help="work directory (default: a temporary one)")
    args = p.parse_args()
    if not (PATENTS.is_dir() and LLAMA2.is_file() and CHINESE_SP.is_file()):
        print(json.dumps({"skipped": f"shared data not found at {SHARED}"}))
        return 0
    with tempfile.TemporaryDirectory(prefix="tokbench-") as tmp:
        work = Path(args.work or tmp)
        t0 = time.time()
        split = split_data(work, args.holdout)
        trained = train_ip(work, args)
        tokens = compare(work, split["tests"])
        merged_report = json.loads((work / "merged" / "merge_report.json").read_text())
        eng = merged_report["english_segmentation"]
        result = {
            "settings": {"ip_vocab": args.ip_vocab, "zh_weight": args.zh_weight, "en_weight": args.en_weight,
                         "character_coverage": args.coverage, "holdout": args.holdout, "merged_vocab": TARGET_VOCAB},
            "data": split["sources"],
            "ip_model": {"vocab_size": trained["vocab_size"], "sentences": trained["sentences_sampled"],
                         "seconds": trained["seconds"]["total"], "peak_rss_mb": trained["peak_rss_mb"]},
            "merge": {k: merged_report[k] for k in ("vocab_size", "appended", "pruned_unreachable",
                                                    "pruned_missing_chars", "trimmed", "padded",
                                                    "unreachable_appended", "appended_with_missing_chars")},
            "english_segmentation_check": {k: eng[k] for k in ("words", "words_changed", "words_changed_fraction",
                                                               "unique_words_resplit", "base_tokens",
                                                               "merged_tokens")},
            "tokens": tokens,
            "ratios": ratios(tokens),
            "seconds": round(time.time() - t0, 1),
        }
        if args.big:
            result["big"] = run_big(work, args)
    from harness import emit  # not a timing comparison: emit only adds the machine and the command

    emit(result, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
