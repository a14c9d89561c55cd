"""PPO iteration cost: where the time goes, and our generation path against plain ``model.generate``.

1. Generation: the rollout's generation path (``patentgpt.train.stages.ppo.rollout.generate``:
   an explicit GenerationConfig, then the response mask) against transformers' own
   ``model.generate`` with the same sampling settings, on the same model and prompts, same seeds
   (so both produce the same tokens); interleaved through bench/harness.py (A B, B A, ...; the
   first round dropped); ``--repeats`` rounds; generated tokens/s of each (sum over sum), the
   median ratio and its spread. Target: ratio >= 0.9.
2. A PPO run of ``--iterations`` iterations on the training core (actor, critic, frozen
   reference and reward model of the same size, all built fresh), timed per iteration:
   generation, scoring (actor log-probs, reference, reward model, critic) and training (the
   optimizer steps); and peak memory (max RSS on CPU, max allocated on GPU).

Prompts: the demo corpus's patent titles (``Write the abstract of a patent titled: ...``).
Prints JSON.

    python bench/ppo_step.py [--iterations 3] [--repeats 5] [--hidden 192] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def title_prompts(path: Path) -> Path:
    rows = []
    for name in ("patents_en.jsonl", "patents_zh.jsonl"):
        for line in (REPO / "patentgpt/assets/demo_corpus" / name).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            ask = (f"Write the abstract of a patent titled: {r['title']}" if r["lang"] == "en"
                   else f"请为题为《{r['title']}》的专利撰写摘要。")
            rows.append(json.dumps({"messages": [{"role": "user", "content": ask},
                                                 {"role": "assistant", "content": r["abstract"]}]}, ensure_ascii=False))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def build_models(work: Path, tok_dir: Path, args) -> tuple[Path, Path]:
    """A fresh causal LM (actor / reference) and a fresh one-label reward model, saved as HF dirs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from patentgpt.model.build import hf_config, round_up
    from patentgpt.model.config import ModelSection

    tok = AutoTokenizer.from_pretrained(tok_dir)
    m = ModelSection(hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 8 * 8, num_layers=args.layers,
                     num_heads=args.hidden // 32, max_position_embeddings=1024)
    torch.manual_seed(0)
    cfg = hf_config(m, round_up(len(tok)), tok)
    lm = AutoModelForCausalLM.from_config(cfg)
    lm.config.architectures = ["LlamaForCausalLM"]
    lm.save_pretrained(work / "actor")
    tok.save_pretrained(work / "actor")
    cfg.num_labels = 1
    cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rm = AutoModelForSequenceClassification.from_config(cfg)
    rm.config.architectures = ["LlamaForSequenceClassification"]
    rm.save_pretrained(work / "rm")
    tok.save_pretrained(work / "rm")
    return work / "actor", work / "rm"


def bench_generation(actor_dir: Path, prompts: Path, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from patentgpt.train.stages.ppo import rollout as ro
    from patentgpt.train.stages.ppo.prompts import to_prompt

    tok = AutoTokenizer.from_pretrained(actor_dir)
    model = AutoModelForCausalLM.from_pretrained(actor_dir).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stop = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    records = [json.loads(x) for x in prompts.read_text(encoding="utf-8").splitlines()][: args.batch]
    rows = [tok(tok.apply_chat_template(to_prompt(r)[0][0], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for r in records]
    ids, mask = ro.left_pad(rows, pad)
    P = ids.shape[1]

    def ours() -> int:
        out = ro.generate(model, ids, mask, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0,
                          pad_id=pad, stop_ids=stop)
        return int(out["response_mask"].sum())

    def plain() -> int:
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=args.max_new_tokens, pad_token_id=pad, eos_token_id=stop)
        return int(ro.response_mask(seq[:, P:], stop).sum())

    from harness import compare

    tokens: dict[str, list[int]] = {"ours": [], "plain": []}

    def seeded(name, fn):
        def run():  # the k-th call of either variant samples with seed 100 + k: the same tokens
            torch.manual_seed(100 + len(tokens[name]))
            t = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t
            tokens[name].append(n)
            return n, dt
        return run

    res = compare({"ours": seeded("ours", ours), "plain": seeded("plain", plain)}, baseline="plain",
                  repeats=args.repeats, warmup=1, unit="generated_tokens")
    ratio = res["ratio_vs_baseline"]["ours"]
    return {"prompts": len(rows), "prompt_tokens_padded": P, "max_new_tokens": args.max_new_tokens, **res,
            "same_tokens_generated": tokens["ours"] == tokens["plain"], "target_ratio>=0.9": ratio["median"] >= 0.9}


def bench_iterations(work: Path, tok_dir: Path, actor: Path, rm: Path, prompts: Path, args) -> dict:
    from patentgpt.config import load_config
    from patentgpt.train.config import PPOConfig
    from patentgpt.train.stages import run_stage
    from patentgpt.train.trainer import memory_gb

    steps = args.iterations * 2  # rollout = 2 global batches, one epoch
    cfg = load_config(PPOConfig, REPO / "configs/ppo/demo.yaml", [
        f"model.init_from={actor}", f"ppo.reward_model={rm}", f"ppo.critic_from={rm}", f"data.tokenizer={tok_dir}",
        f"data.sources=[{{name: titles, path: {prompts}}}]", "data.max_prompt_len=128",
        f"ppo.rollout_batch_size={2 * args.batch}", f"ppo.generation_batch_size={args.batch}",
        f"ppo.max_new_tokens={args.max_new_tokens}", f"train.micro_batch_size={args.batch}",
        f"train.global_batch_size={args.batch}", f"train.max_steps={steps}", f"checkpoint.every_steps={steps}",
        "checkpoint.export_at_end=false", f"run.output_dir={work}", "run.name=ppo", "logging.wandb.mode=disabled",
        "checkpoint.resume=never"])
    run_stage("ppo", cfg)
    rows = [json.loads(x) for x in (work / "ppo" / "metrics.jsonl").read_text().splitlines() if '"iteration"' in x]
    iters = []
    for i in range(1, args.iterations + 1):
        its = [r for r in rows if r["iteration"] == i]
        rollout = its[0]["time/iteration_s"]
        step_total = sum(r["step_time_s"] for r in its)
        iters.append({"iteration_s": step_total, "generation_s": its[0]["time/generation_s"],
                      "actor_logprobs_s": its[0]["time/actor_logp_s"], "reference_s": its[0]["time/reference_s"],
                      "reward_model_s": its[0]["time/reward_s"], "critic_s": its[0]["time/critic_s"],
                      "training_s": step_total - rollout, "gen_tokens_per_sec": its[0]["gen_tokens_per_sec"],
                      "train_tokens_per_sec": statistics.mean(r["train_tokens_per_sec"] for r in its),
                      "response_length": its[0]["response_length"]})
    later = iters[1:] or iters  # the first iteration carries warm-up
    return {"iterations": iters,
            "median_after_first": {k: statistics.median(it[k] for it in later) for k in iters[0]},
            "peak_memory_gb": memory_gb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="prompts per generate() call and per optimizer step")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    real_stdout = os.dup(1)
    os.dup2(2, 1)  # only the JSON goes to stdout
    import torch

    from patentgpt.demo import build_tokenizer

    out = {"args": vars(args), "threads": torch.get_num_threads(),
           "device": "cuda" if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_dir = build_tokenizer(work / "tok", vocab_size=2000)
        prompts = title_prompts(work / "titles.jsonl")
        actor, rm = build_models(work, tok_dir, args)
        out["generation"] = bench_generation(actor, prompts, args)
        out["ppo"] = bench_iterations(work, tok_dir, actor, rm, prompts, args)
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    from harness import emit

    emit(out, out=args.out)


if __name__ == "__main__":
    main()
