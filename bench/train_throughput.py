"""Pretraining throughput: PatentGPT's packed DeepSpeed step vs a plain transformers Trainer.

Same model, same real patent text (documents of varied lengths), same machine, same batch
shape. The baseline is what a user would write: tokenize with truncation, pad each batch to
its longest sequence (DataCollatorForLanguageModeling), ``Trainer.train()``. Prints JSON:
tokens/s and useful (non-padding) tokens/s of both, their ratios, and MFU against a matmul
peak measured on this machine in the same run.

    python bench/train_throughput.py [--steps 30] [--seq-len 512] [--batch 8] [--mix files records]
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
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(os.environ.get("PATENTGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = ["model.hidden_size=256", "model.intermediate_size=688", "model.num_layers=4", "model.num_heads=8",
         "model.num_kv_heads=8"]


FILES = ["uspto_fulltext.jsonl", "historical_us_ocr.jsonl", "patentsview_abstracts.jsonl",
         "tfh_annotated_abstracts.jsonl"]


def load_texts(limit: int, mix: str) -> tuple[list[str], str]:
    """Real patent text of varied lengths. ``files``: an equal share of long full texts, long
    historical OCR and short abstracts; ``records``: a uniform sample of every English patent
    record in ../shared/data (the corpus's own length distribution). The demo corpus otherwise."""
    import random

    from patentgpt.data.tokenize import read_jsonl

    paths = [SHARED / "patents/en" / f for f in FILES]
    if not all(p.is_file() for p in paths):
        corpus = REPO / "patentgpt/assets/demo_corpus"
        return list(read_jsonl(sorted(corpus.glob("*.jsonl")))), "demo corpus"
    if mix == "files":
        texts = []
        for p in paths[:3]:
            texts += list(read_jsonl([p]))[: limit // 3]
        return texts, "shared patents, equal share per file: uspto fulltext, historical OCR, patentsview abstracts"
    texts = list(read_jsonl(paths))
    random.Random(0).shuffle(texts)
    return texts[:limit], "shared patents, uniform sample of all English patent records"


def run_ours(work: Path, tok_dir: Path, texts: list[str], args) -> dict:
    from transformers import AutoTokenizer

    from patentgpt.config import load_config
    from patentgpt.data.shards import ShardWriter, TokenizerInfo
    from patentgpt.data.tokenize import tokenize_texts
    from patentgpt.train.config import PretrainConfig
    from patentgpt.train.stages import run_stage

    tok = AutoTokenizer.from_pretrained(tok_dir)
    with ShardWriter(work / "shards", TokenizerInfo.from_tokenizer(tok)) as w:
        tokenize_texts(texts, tok, w)
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/demo_dense.yaml", [
        *MODEL, f"data.tokenizer={tok_dir}", f"data.sources=[{{name: p, path: {work / 'shards'}}}]",
        f"data.seq_len={args.seq_len}", f"run.output_dir={work}", "run.name=ours",
        f"train.max_steps={args.steps}", f"train.micro_batch_size={args.batch}",
        f"train.global_batch_size={args.batch}", "optim.warmup_steps=2", "logging.every_steps=1",
        "logging.wandb.mode=disabled", "checkpoint.every_steps=100000", "checkpoint.export_at_end=false",
        "deepspeed.zero_stage=0", f"model.vocab_size={len(tok)}"])
    run_stage("pretrain", cfg)
    rows = [json.loads(ln) for ln in (work / "ours" / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in rows[3:]]
    tokens = args.batch * args.seq_len
    return {"step_time_s": statistics.median(times), "tokens_per_step": tokens, "useful_tokens_per_step": tokens}


def run_trainer(work: Path, tok_dir: Path, texts: list[str], args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                              TrainingArguments)

    from patentgpt.config import load_config
    from patentgpt.model.build import build_model
    from patentgpt.model.config import ModelSection
    from patentgpt.train.dist import RENDEZVOUS_ENV

    # Our run initialised a one-process gloo group; leave none behind, or Trainer would wrap the
    # baseline in DistributedDataParallel and charge it for that.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key in RENDEZVOUS_ENV:
        os.environ.pop(key, None)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], truncation=True, max_length=args.seq_len), batched=True, remove_columns=["text"])
    model_cfg = load_config(ModelSection, data={k.split(".", 1)[1]: v for k, v in
                                                (o.split("=") for o in MODEL)} | {"max_position_embeddings": 4096})
    torch.manual_seed(0)
    model = build_model(model_cfg, vocab_size=len(tok))
    stats = {"times": [], "tokens": [], "useful": []}
    collator = DataCollatorForLanguageModeling(tok, mlm=False)

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            stats["times"].append(time.perf_counter() - self.t0)

    def counting_collator(features):
        batch = collator(features)
        stats["tokens"].append(batch["input_ids"].numel())
        stats["useful"].append(int(batch["attention_mask"].sum()))
        return batch

    targs = TrainingArguments(output_dir=str(work / "trainer"), per_device_train_batch_size=args.batch,
                              max_steps=args.steps, learning_rate=2e-3, warmup_steps=2, logging_steps=1000,
                              save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                              seed=0, disable_tqdm=True)
    Trainer(model=model, args=targs, train_dataset=ds, data_collator=counting_collator,
            callbacks=[Timer()]).train()
    n = len(stats["times"])
    return {"step_time_s": statistics.median(stats["times"][3:]),
            "tokens_per_step": statistics.mean(stats["tokens"][3:n]),
            "useful_tokens_per_step": statistics.mean(stats["useful"][3:n])}


def summarize(ours: dict, base: dict, config, seq_len: int) -> dict:
    from patentgpt.model.flops import flops_per_token

    out = {"flops_per_token": flops_per_token(config, seq_len)}
    for name, r in (("patentgpt", ours), ("hf_trainer_pad_longest", base)):
        useful = r["useful_tokens_per_step"] / r["step_time_s"]
        out[name] = {"tokens_per_sec": r["tokens_per_step"] / r["step_time_s"], "useful_tokens_per_sec": useful,
                     "padding_fraction": 1 - r["useful_tokens_per_step"] / r["tokens_per_step"]}
    out["ratio_tokens_per_sec"] = out["patentgpt"]["tokens_per_sec"] / out["hf_trainer_pad_longest"]["tokens_per_sec"]
    out["ratio_useful_tokens_per_sec"] = (out["patentgpt"]["useful_tokens_per_sec"]
                                          / out["hf_trainer_pad_longest"]["useful_tokens_per_sec"])
    out["targets"] = {"tokens_per_sec_ratio>=1.0": out["ratio_tokens_per_sec"] >= 1.0,
                      "useful_tokens_per_sec_ratio>=1.5": out["ratio_useful_tokens_per_sec"] >= 1.5}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--docs", type=int, default=1500)
    p.add_argument("--mix", nargs="+", choices=["files", "records"], default=["files", "records"])
    args = p.parse_args()

    # Only the JSON goes to stdout: libraries' prints are sent to stderr while we measure.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    import torch

    from patentgpt.demo import build_tokenizer
    from patentgpt.model.flops import measure_matmul_peak

    # The machine's matmul peak, measured before and after the runs (best of both), so a busy
    # moment during one measurement cannot inflate MFU.
    peak = measure_matmul_peak(torch.float32, seconds=3.0)
    out = {"seq_len": args.seq_len, "batch": args.batch, "steps": args.steps, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoConfig

        tok_dir = build_tokenizer(Path(tmp) / "tok", vocab_size=8000)
        data = {mix: load_texts(args.docs, mix) for mix in args.mix}
        # all our runs first (they share one process group), then the Trainer baselines
        ours = {mix: run_ours(Path(tmp) / mix, tok_dir, texts, args) for mix, (texts, _) in data.items()}
        for mix, (texts, source) in data.items():
            base = run_trainer(Path(tmp) / mix, tok_dir, texts, args)
            config = AutoConfig.from_pretrained(Path(tmp) / mix / "ours" / "checkpoints" /
                                                f"step_{args.steps:08d}" / "hf_config")
            out[mix] = {"data": source, "docs": len(texts), **summarize(ours[mix], base, config, args.seq_len)}
    peak = max(peak, measure_matmul_peak(torch.float32, seconds=3.0))
    out["matmul_peak_gflops"] = peak / 1e9
    for mix in args.mix:  # model FLOPs of useful tokens / measured peak
        for name in ("patentgpt", "hf_trainer_pad_longest"):
            r = out[mix][name]
            r["mfu_useful"] = r["useful_tokens_per_sec"] * out[mix]["flops_per_token"] / peak
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
