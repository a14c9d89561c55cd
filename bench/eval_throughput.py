"""Multiple-choice items scored per second: our harness (PatentLM, contexts shared across a
question's choices) against lm-eval's stock HF adapter (HFLM, same batch size, its one-token
logits cache on) on the same model and the same items. Prints JSON only.

Items: the IPQuiz and PatentMatch fixtures scored two ways (option letters; option texts, the
case where a question's context would otherwise run once per option) and, when ../shared/data is
present, the patent-bar true/false set. Variants run interleaved through bench/harness.py (A B, B A,
...; first round dropped); the report gives throughput as sum of items over sum of time, the median
and spread of the per-round speed ratio, and
checks that both produce identical predictions (and the largest log-likelihood difference).

    .venv/bin/python bench/eval_throughput.py [--model HF_DIR] [--repeats 3] [--limit 200]

Without --model a random LLaMA (hidden 256, 4 layers) with the demo IP tokenizer is built.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def build_model(tmp: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from patentgpt.demo import build_tokenizer

    tok = AutoTokenizer.from_pretrained(build_tokenizer(tmp / "tok", 2000))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp / "model"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def text_choice_task(tmp: Path) -> Path:
    """The PatentMatch task file with option texts as the scored continuations."""
    import yaml

    from patentgpt.eval.tasks import EVALS_DIR

    spec = yaml.safe_load((EVALS_DIR / "patentmatch" / "patentmatch.yaml").read_text(encoding="utf-8"))
    spec.update(name="patentmatch_texts", choices="texts")
    path = tmp / "patentmatch_texts.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def run_once(lm, tasks, limit):
    from patentgpt.eval.harness import evaluate

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = evaluate(lm, tasks, out, limit=limit, write=False)
        dt = time.perf_counter() - t0
    return dt, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import logging
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.eval.lm import PatentLM
    from patentgpt.eval.tasks import load_task

    tmp = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    model_dir = Path(args.model) if args.model else build_model(tmp)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tasks = ["ipquiz", "patentmatch", str(text_choice_task(tmp))]
    if not load_task("patentbar_tf").skipped:
        tasks.append("patentbar_tf")
    variants = {"patentgpt": PatentLM(model, tok, batch_size=args.batch_size),
                "lm_eval_hf": HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)}
    torch.set_num_threads(torch.get_num_threads())
    from harness import compare, emit

    results = {}

    def variant(name):
        def measured():
            dt, res = run_once(variants[name], tasks, args.limit)
            results[name] = res
            return sum(len(e["outcomes"]) for e in res["tasks"].values()), dt
        return measured

    # interleaved (A B, B A, ...), the first round dropped as warm-up
    res = compare({n: variant(n) for n in variants}, baseline="lm_eval_hf", repeats=args.repeats, warmup=1,
                  unit="items")
    same_pred = True
    for tname, ours in results["patentgpt"]["tasks"].items():
        theirs = results["lm_eval_hf"]["tasks"][tname]
        same_pred &= [o["pred"] for o in ours["outcomes"]] == [o["pred"] for o in theirs["outcomes"]]
        same_pred &= ours["metrics"] == theirs["metrics"]
    emit(res, out=args.out, extra={
        "benchmark": "eval_throughput",
        "model": str(model_dir) if args.model else "random LLaMA h256 x4 layers, demo tokenizer (2,000 pieces)",
        "tasks": list(results["patentgpt"]["tasks"]),
        "items": sum(len(e["outcomes"]) for e in results["patentgpt"]["tasks"].values()),
        "batch_size": args.batch_size,
        "identical_predictions_and_scores": bool(same_pred),
        "scores": {t: e["metrics"].get("acc") for t, e in results["patentgpt"]["tasks"].items()},
    })


if __name__ == "__main__":
    main()
