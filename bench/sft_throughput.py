"""SFT throughput: PatentGPT's SFT stage vs TRL's ``SFTTrainer``, same model, chat data and machine.

Data: the pipeline's instruction synthesis over the embedded demo corpus (IP tasks, en + zh) mixed
with the general alpaca instructions of ../shared/data when present; only conversations that fit
``--seq-len`` (both sides train on the same set). Baselines, what a user of this stack would run:

* ``trl_padded``: ``SFTTrainer`` with ``assistant_only_loss=True``, batches padded to their longest;
* ``trl_packed``: the same with ``packing=True`` (TRL's best-fit-decreasing packing, padding-free).

The variants run interleaved through bench/harness.py (ours, trl_padded, trl_packed, then reversed),
each a short run whose first steps are dropped as warm-up; throughput = sum of assistant (target)
tokens / sum of step times. The JSON reports the median and spread of each ratio, and a masking check:
on one batch, our assistant-only loss and TRL's agree (|diff| <= 1e-5).

    python bench/sft_throughput.py [--steps 12] [--repeats 2] [--seq-len 1024] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=8, max_position_embeddings=2048)
# ChatML with TRL's generation markers around exactly what our SFT labels: content + <|im_end|> + \n
TRL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def conversations(tok, seq_len: int) -> tuple[list[list[dict]], str]:
    from patentgpt.data.chat import to_messages
    from patentgpt.data.chat_loader import tokenize_chat
    from patentgpt.data.jsonl import read_json_records
    from tests._chat_support import synth_records

    convs = [r["messages"] for r in synth_records()]
    what = "synthesized IP instructions (demo corpus)"
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        path = SHARED / "instructions" / name
        if path.is_file():
            convs += [m for _, r, why in read_json_records(path) if why is None
                      for m, bad in [to_messages(r)] if bad is None]
            what += f" + {name}"
    fit = [c for c in convs if len(tokenize_chat(tok, c)[0]) <= seq_len]
    import random

    random.Random(0).shuffle(fit)
    return fit, f"{what}; {len(fit)} of {len(convs)} conversations fit {seq_len} tokens"


def run_ours(work: Path, name: str, model_dir: Path, chat_file: Path, args) -> dict:
    from patentgpt.config import load_config
    from patentgpt.train.config import SFTConfig
    from patentgpt.train.stages import run_stage

    cfg = load_config(SFTConfig, REPO / "configs/sft/demo.yaml", [
        f"model.init_from={model_dir}", f"data.sources=[{{name: chat, path: {chat_file}}}]",
        f"data.seq_len={args.seq_len}", f"run.output_dir={work}", f"run.name={name}", f"train.max_steps={args.steps}",
        f"train.micro_batch_size={args.batch}", f"train.global_batch_size={args.batch}", "optim.warmup_steps=1",
        "logging.every_steps=1", "logging.wandb.mode=disabled", "checkpoint.every_steps=100000",
        "checkpoint.export_at_end=false", "eval.holdout=0", "deepspeed.zero_stage=0", "checkpoint.resume=never"])
    run_stage("sft", cfg)
    rows = [json.loads(ln) for ln in (work / name / "metrics.jsonl").read_text().splitlines()][args.warmup:]
    return {"targets": sum(r["targets"] for r in rows), "seconds": sum(r["step_time_s"] for r in rows),
            "rows_tokens": len(rows) * args.batch * args.seq_len}


def run_trl(work: Path, name: str, model_dir: Path, dataset, tok, args, packing: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    times, targets, tokens = [], [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            targets.append(int((inputs["labels"][..., 1:] != -100).sum()))
            tokens.append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, num_items_in_batch)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    cfg = TRLConfig(output_dir=str(work / name), max_steps=args.steps, per_device_train_batch_size=args.batch,
                    learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=1, logging_steps=1000,
                    save_strategy="no", report_to=[], assistant_only_loss=True, max_length=args.seq_len,
                    packing=packing, use_cpu=True, dataloader_num_workers=0, seed=1234, bf16=False,
                    dataset_num_proc=1, disable_tqdm=True)
    Counting(model=model, args=cfg, train_dataset=dataset, processing_class=tok, callbacks=[Timer()]).train()
    w = args.warmup
    return {"targets": sum(targets[w:]), "seconds": sum(times[w:]), "rows_tokens": sum(tokens[w:])}


def masking_check(model_dir: Path, tok, convs: list, work: Path) -> dict:
    """Loss of one batch: our labels (tokenize_chat) vs TRL's own preprocessing and collator with
    ``assistant_only_loss=True`` (the batch its trainer would build)."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from patentgpt.data.chat_loader import tokenize_chat

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = convs[:4]
    pad = tok.eos_token_id
    rows = [tokenize_chat(tok, c)[:2] for c in batch]
    n = max(len(r[0]) for r in rows)
    ids, labels, mask = np.full((4, n), pad), np.full((4, n), -100), np.zeros((4, n), dtype=np.int64)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(x)], mask[i, : len(x)] = x, y, 1
    with torch.no_grad():
        ours = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels)).loss
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list([{"messages": c} for c in batch]),
                         args=TRLConfig(output_dir=str(work / "mask"), assistant_only_loss=True, report_to=[],
                                        use_cpu=True, max_length=None, dataset_num_proc=1))
    processed = [trainer.train_dataset[i] for i in range(len(batch))]
    collated = trainer.data_collator(processed)
    with torch.no_grad():
        theirs = model(**{k: v for k, v in collated.items() if k in ("input_ids", "attention_mask", "labels")}).loss
    same_ids = all(list(p["input_ids"]) == list(r[0]) for p, r in zip(processed, rows))
    return {"our_loss": float(ours), "trl_loss": float(theirs), "abs_diff": abs(float(ours) - float(theirs)),
            "same_token_ids": same_ids}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--check-only", action="store_true", help="only the masking check (seconds)")
    args = ap.parse_args()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from patentgpt.demo import build_tokenizer

    work = Path(tempfile.mkdtemp(prefix="sft_bench_"))
    tok_dir = build_tokenizer(work / "tok", 3000)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    convs, data_desc = conversations(tok, args.seq_len)
    chat_file = work / "chat.jsonl"
    chat_file.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
    torch.manual_seed(0)
    model_dir = work / "model"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 **MODEL)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    trl_tok = AutoTokenizer.from_pretrained(tok_dir)
    trl_tok.chat_template = TRL_TEMPLATE
    trl_tok.pad_token = trl_tok.eos_token
    dataset = Dataset.from_list([{"messages": c} for c in convs])

    if args.check_only:
        print(json.dumps({"masking_check": masking_check(model_dir, trl_tok, convs, work)}, indent=2))
        return
    from harness import compare, emit, spread

    records: dict[str, list[dict]] = {}

    def variant(name, run):
        def measured():
            r = run(f"{name}-{len(records.setdefault(name, []))}")
            records[name].append(r)
            return r["targets"], r["seconds"]
        return measured

    variants = {"ours": variant("ours", lambda n: run_ours(work, n, model_dir, chat_file, args)),
                "trl_padded": variant("trl_padded", lambda n: run_trl(work, n, model_dir, dataset, trl_tok, args,
                                                                      packing=False)),
                "trl_packed": variant("trl_packed", lambda n: run_trl(work, n, model_dir, dataset, trl_tok, args,
                                                                      packing=True))}
    # interleaved in one process (ours, trl_padded, trl_packed, then reversed); each run drops its
    # first --warmup steps itself
    res = compare(variants, baseline="trl_packed", repeats=args.repeats, warmup=0, unit="target_tokens")
    padded = [a / b for a, b in zip(res["per_round"]["ours"], res["per_round"]["trl_padded"])]
    out = {"benchmark": "sft_throughput", "data": data_desc, "model": MODEL | {"vocab_size": len(tok)},
           "seq_len": args.seq_len, "batch": args.batch, "steps_per_run": args.steps,
           "warmup_steps_dropped": args.warmup, **res,
           "ratio_ours_vs_trl_padded": spread(padded),
           "non_target_fraction": {k: round(1 - sum(r["targets"] for r in v) / sum(r["rows_tokens"] for r in v), 3)
                                   for k, v in records.items()}}
    out["masking_check"] = masking_check(model_dir, trl_tok, convs, work)
    emit(out, out=args.out)


if __name__ == "__main__":
    main()
