"""Deduplication: MinHash estimates, planted exact and near duplicates, deterministic survivors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from patentgpt.data.pipeline.config import DedupConfig
from patentgpt.data.pipeline.dedup import Signer, decide
from patentgpt.data.pipeline.minhash import (MinHasher, codepoints, lsh_candidates, optimal_bands, prepare,
                                             shingle_hashes, token_hashes)

WORDS = ("valve spindle seat disc spring handle nut bore cast iron body chamber piston rod lever pin shaft "
         "gear housing cover plate bolt flange gasket pipe outlet inlet pressure fluid flow motor drive").split()


def essay(rng: random.Random, n: int = 160) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def run_dedup(docs: list[dict], cfg: DedupConfig | None = None, priorities: dict | None = None):
    cfg = cfg or DedupConfig()
    signer = Signer(cfg, seed=7, priorities=priorities or {})
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    batches = [signer.sign_lines(lines[i:i + 5]) for i in range(0, len(lines), 5)]  # several batches
    res = decide(batches, cfg)
    kept = {docs[i]["id"] for i in range(len(docs)) if res.status[i] == 0}
    removed = {docs[i]["id"]: (("exact", "near")[res.status[i] - 1], docs[res.survivor_of[i]]["id"])
               for i in range(len(docs)) if res.status[i] != 0}
    return kept, removed, res


def doc(i, text, source="a", lang="en"):
    return {"id": i, "source": source, "loc": f"{source}.jsonl:{i}", "lang": lang, "text": text, "meta": {}}


def exact_jaccard(a: str, b: str, n: int = 5) -> float:
    def shingles(t):
        w = t.lower().replace(".", " ").split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_minhash_estimates_track_exact_jaccard():
    rng = random.Random(0)
    hasher = MinHasher(256, seed=3)
    errors = []
    for _ in range(40):
        base = essay(rng, 200).split()
        other = list(base)
        for _ in range(rng.randint(1, 40)):  # mutate some words
            other[rng.randrange(len(other))] = rng.choice(WORDS) + "x"
        a, b = " ".join(base), " ".join(other)
        cps, word, d = codepoints([prepare(a), prepare(b)])
        tok, tok_doc = token_hashes(cps, word, d, [False, False])
        sh, sh_doc = shingle_hashes(tok, tok_doc, 2, np.array([5, 5]))
        sig = hasher.signatures(sh, sh_doc, 2)
        errors.append((sig[0] == sig[1]).mean() - exact_jaccard(a, b))
    assert abs(np.mean(errors)) < 0.02 and np.std(errors) < 0.05  # sd of an unbiased estimate ~ 0.03


def test_bands_match_datasketch_rule():
    assert optimal_bands(0.8, 128) == (9, 13)
    b, r = optimal_bands(0.5, 64)
    assert b * r <= 64


def test_planted_exact_and_near_duplicates_and_deterministic_survivor():
    rng = random.Random(1)
    base = [essay(rng) for _ in range(30)]
    docs = [doc(f"D{i:02d}", t) for i, t in enumerate(base)]
    docs.append(doc("X-exact", base[3].upper().replace(" ", "  ").replace(".", " !")))  # exact after normalizing
    w = base[7].split()
    w[80] = "replaced"
    docs.append(doc("X-near", " ".join(w)))
    docs.append(doc("A-near-first", " ".join(w[:-2]) + " extra words."))  # sorts before D07: survives
    kept, removed, res = run_dedup(docs)
    assert removed["X-exact"] == ("exact", "D03")
    assert removed["X-near"][0] == "near" and removed["D07"] == ("near", "A-near-first")
    assert removed["X-near"][1] == "A-near-first"
    assert len(removed) == 3 and len(kept) == 30
    # the same survivors whatever the order of the input
    for seed in range(3):
        shuffled = list(docs)
        random.Random(seed).shuffle(shuffled)
        k2, r2, _ = run_dedup(shuffled)
        assert (k2, r2) == (kept, removed)
    clusters = sorted((c["kind"], len(c["members"])) for c in res.clusters)
    assert clusters == [("exact", 2), ("near", 3)]


def test_source_priority_decides_across_sources():
    rng = random.Random(2)
    text = essay(rng)
    docs = [doc("Z-full", text, source="fulltext"), doc("A-abstract", text, source="abstracts")]
    kept, removed, _ = run_dedup(docs, priorities={"fulltext": 0, "abstracts": 1})
    assert kept == {"Z-full"} and removed == {"A-abstract": ("exact", "Z-full")}


def test_chinese_character_shingles_and_no_false_positives():
    a = "本发明公开了一种基于温度分区的动力电池热管理方法及系统，包括在电池包内按照电芯排布划分多个温度区域，" \
        "每个温度区域设置至少一个温度传感器；电池管理单元实时采集各温度区域的温度值并计算区域温差。"
    b = a.replace("实时采集", "实时地采集")
    c = "本发明涉及一种农业灌溉装置，包括水泵、过滤器、滴灌管以及控制器，控制器根据土壤湿度传感器的读数调节水泵转速。"
    docs = [doc("Z1", a, lang="zh"), doc("Z2", b, lang="zh"), doc("Z3", c, lang="zh")]
    kept, removed, _ = run_dedup(docs)
    assert removed == {"Z2": ("near", "Z1")} and kept == {"Z1", "Z3"}


def test_threshold_and_verification():
    rng = random.Random(4)
    base = essay(rng, 200).split()
    far = list(base)
    for i in range(0, 200, 12):
        far[i] = "zz"
    docs = [doc("A", " ".join(base)), doc("B", " ".join(far))]
    assert 0.3 < exact_jaccard(docs[0]["text"], docs[1]["text"]) < 0.6
    assert run_dedup(docs)[1] == {}  # default threshold 0.8
    assert run_dedup(docs, DedupConfig(threshold=0.3, bands=64, rows=2))[1] == {"B": ("near", "A")}
    # without verification an LSH collision is enough; with it, the estimate must reach the threshold
    assert run_dedup(docs, DedupConfig(threshold=0.7, bands=64, rows=2, verify=False))[1] == {"B": ("near", "A")}
    assert run_dedup(docs, DedupConfig(threshold=0.7, bands=64, rows=2))[1] == {}


def test_lsh_large_bucket_is_linked_not_exploded():
    sig = np.zeros((500, 8), dtype=np.uint32)  # 500 identical signatures
    pairs = lsh_candidates(sig, bands=2, rows=4, max_bucket_pairs=10)
    assert len(pairs) == 499 and (pairs[:, 0] == 0).all()


@pytest.mark.shared_data
def test_planted_duplicates_in_real_abstracts(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "patents" / "en" / "tfh_annotated_abstracts.jsonl")]
    rows = [r for r in rows if len(r["abstract"].split()) >= 120][:150]
    docs = [doc(r["patent_number"], r["abstract"], source="real") for r in rows]
    before_kept, before_removed, _ = run_dedup(docs)
    rng = random.Random(5)
    planted = {}
    for j, i in enumerate(rng.sample(range(len(rows)), 20)):
        text = rows[i]["abstract"]
        if j % 2:  # exact: case and spacing only
            copy = text.upper().replace(" ", "   ")
        else:  # near: one word changed
            w = text.split()
            w[len(w) // 2] = "modified"
            copy = " ".join(w)
        planted[f"ZZ-{j:02d}"] = rows[i]["patent_number"]
        docs.append(doc(f"ZZ-{j:02d}", copy, source="real"))
    kept, removed, _ = run_dedup(docs)
    for pid, original in planted.items():
        # the copy goes; it names the original (or the original's own survivor, if the real data had a duplicate)
        survivor = before_removed.get(original, (None, original))[1]
        assert pid in removed and removed[pid][1] == survivor, pid
    assert kept == before_kept
