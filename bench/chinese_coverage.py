"""Chinese coverage of the merged IP tokenizer, with and without a required character set.

Trains the IP tokenizer as bench/tokenizer_compression.py does (10% of every shared patent
source held out), merges it into LLaMA-2 (55,296 pieces) without a required set, with
``required_chars: gb2312-1`` and with ``[gb2312-1, gb2312-2]``, and measures on Chinese text

- held out from the patent sources used in training (titles, abstracts, claims), and
- from sources never used in training: the Chinese instructions and preference dialogues in
  ../shared/data (general-domain text, a harder test of coverage): their lines of Chinese text
  (``*_chinese_lines``: Han, CJK punctuation, ASCII; the target is on these) and the texts as
  they are (``*_as_is``: with Gujarati quotes and emoji no Chinese vocabulary covers),

the byte-fallback rate (share of tokens that are ``<0xNN>`` pieces), tokens per character and how
many of the 3,755 level-1 GB2312 characters are single pieces; Chinese-LLaMA's merge
(LLaMA-2 + chinese_sp.model, 49,953 pieces) is the reference. Target (issue #16): every required
character one piece; byte fallback on the unseen sources below 0.2%. Prints JSON.

    python bench/chinese_coverage.py [--work DIR] [--ip-vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizer_compression as tc  # noqa: E402  (same split and training settings)

SHARED = tc.SHARED
_HAN = re.compile(r"[\u3400-\u9fff]")
# Chinese text: Han, CJK and full-width punctuation, general punctuation, ASCII. Lines with other
# scripts or emoji (the preference dialogues quote Gujarati and use emoji) are measured apart.
_NOT_CHINESE = re.compile(r"[^\x00-\x7f\u2000-\u206f\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef\u00b7\u00d7]")


def chinese_lines(texts: list[str]) -> list[str]:
    return [ln for t in texts for ln in t.splitlines() if _HAN.search(ln) and not _NOT_CHINESE.search(ln)]


def unseen_chinese_texts() -> dict[str, list[str]]:
    """Chinese text from shared sources the tokenizer never trains on."""
    out = {}
    alpaca = json.loads((SHARED / "instructions" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    out["alpaca_zh"] = [" ".join(str(r.get(k) or "") for k in ("instruction", "input", "output")).strip()
                        for r in alpaca]
    dpo = json.loads((SHARED / "preferences" / "dpo_zh_demo.json").read_text(encoding="utf-8"))
    out["dpo_zh"] = ["\n".join(m["value"] for m in [*r["conversations"], r["chosen"], r["rejected"]]) for r in dpo]
    return {k: [t for t in v if _HAN.search(t)] for k, v in out.items()}


def measure(sp, texts: list[str]) -> dict:
    """Tokens per character and the byte-fallback rate: byte pieces for characters the vocabulary
    lacks, over all tokens. LLaMA-2's vocabulary writes every newline and tab as a byte piece
    (<0x0A>, <0x09>) by design; those are counted apart (``whitespace_byte_rate``)."""
    ids = sp.encode(texts)
    tokens = sum(map(len, ids))
    byte_ids = {i for i in range(sp.get_piece_size()) if sp.is_byte(i)}
    space_ids = {sp.piece_to_id(f"<0x{b:02X}>") for b in (0x09, 0x0A, 0x0D)} & byte_ids
    byte_tokens = sum(1 for seq in ids for i in seq if i in byte_ids and i not in space_ids)
    space_tokens = sum(1 for seq in ids for i in seq if i in space_ids)
    chars = sum(map(len, texts))
    return {"tokens": tokens, "tokens_per_char": round(tokens / chars, 4),
            "byte_fallback_rate": round(byte_tokens / max(1, tokens), 5),
            "whitespace_byte_rate": round(space_tokens / max(1, tokens), 5)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ip-vocab", type=int, default=32000)
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--work", help="work directory (reused: the IP model is trained once)")
    args = p.parse_args()
    if not (tc.PATENTS.is_dir() and tc.LLAMA2.is_file() and tc.CHINESE_SP.is_file()):
        print(json.dumps({"skipped": f"shared data not found at {SHARED}"}))
        return 0
    import sentencepiece as spm

    from patentgpt.tokenizer.charset import required_char_set, single_piece_coverage
    from patentgpt.tokenizer.hf import load_proto
    from patentgpt.tokenizer.merge import merge_protos, merge_tokenizers

    with tempfile.TemporaryDirectory(prefix="zhcov-") as tmp:
        work = Path(args.work or tmp)
        t0 = time.time()
        split = tc.split_data(work, 0.1)
        ip_model = work / "ip" / "ip.model"
        if not ip_model.is_file():
            ns = argparse.Namespace(zh_weight=2.0, en_weight=1.0, ip_vocab=args.ip_vocab, coverage=1.0)
            tc.train_ip(work, ns)
        t_train = time.time() - t0
        level1 = required_char_set("gb2312-1")
        models, reports = {}, {}
        variants = (("ours_before", None), ("ours_gb2312_1", ["gb2312-1"]),
                    ("ours_gb2312_1_2", ["gb2312-1", "gb2312-2"]),
                    ("ours_gb2312_1_2_big5_1", ["gb2312-1", "gb2312-2", "big5-1"]))
        for name, required in variants:
            t1 = time.time()
            rep = merge_tokenizers(tc.LLAMA2, ip_model, work / name, vocab_size=tc.TARGET_VOCAB, required_chars=required)
            reports[name] = {"seconds": round(time.time() - t1, 1), "vocab_size": rep["vocab_size"],
                             "appended": rep["appended"], "trimmed": rep["trimmed"],
                             "required_chars_added": rep["required_chars_added"],
                             "english_words_changed_fraction": rep["english_segmentation"]["words_changed_fraction"]}
            models[name] = load_proto(work / name / "tokenizer.model")
        models["chinese_llama"], _ = merge_protos(tc.LLAMA2, tc.CHINESE_SP, vocab_size=0, prune_unreachable=False)
        models["llama2"] = load_proto(tc.LLAMA2)
        unseen = unseen_chinese_texts()
        sets = {"heldout_patents": [t for ts in split["tests"]["zh"].values() for t in ts],
                **{f"{k}_chinese_lines": chinese_lines(v) for k, v in unseen.items()},
                **{f"{k}_as_is": v for k, v in unseen.items()},
                "heldout_en_patents": [t for ts in split["tests"]["en"].values() for t in ts]}  # what it costs English
        result = {"texts": {k: {"documents": len(v), "chars": sum(map(len, v))} for k, v in sets.items()},
                  "merges": reports, "results": {}}
        for name, proto in models.items():
            sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
            cov = single_piece_coverage(proto, level1, max_missing=10)
            result["results"][name] = {"vocab_size": len(proto.pieces),
                                       "gb2312_1_single_pieces": cov["single_piece"],
                                       **{k: measure(sp, v) for k, v in sets.items()}}
        unseen = [k for k in sets if k.endswith("_chinese_lines")]
        result["targets"] = {}
        for name, _ in variants[1:]:
            ours = result["results"][name]
            result["targets"][name] = {
                "every_gb2312_1_char_one_piece": ours["gb2312_1_single_pieces"] == len(level1),
                "unseen_byte_fallback_below_0.2pct": all(ours[k]["byte_fallback_rate"] < 0.002 for k in unseen),
                "vocab_le_55296": ours["vocab_size"] <= tc.TARGET_VOCAB,
            }
        result["seconds"] = {"train_ip": round(t_train, 1), "total": round(time.time() - t0, 1)}
    from harness import emit  # not a timing comparison: emit only adds the machine and the command

    emit(result, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
