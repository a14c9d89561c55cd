"""Pretraining throughput: PatentGPT's DeepSpeed step vs the ways a user would train with transformers.

Same model, same real patent text (documents of varied lengths), same batch shape (``--batch`` rows of
``--seq-len`` tokens). Variants, in alternating processes (one process per variant per round, in the
harness's A B C.. / ..C B A order, so machine noise lands on every side):

- ``patentgpt``: ``patentgpt pretrain`` (Trainer.fit on DeepSpeed, packed shards);
- ``patentgpt_autocast`` (bf16 only): the same with fp32 weights and ``train.autocast`` (bf16 autocast);
- ``patentgpt_compile``: the same with ``train.compile`` (``torch.compile`` through DeepSpeed's engine);
- ``patentgpt_autocast_compile`` (bf16 only): fp32 weights, bf16 autocast and ``train.compile``;
- ``trainer_packed``: ``transformers.Trainer`` on packed blocks (``group_texts``, as transformers' run_clm);
- ``trainer_packed_compile``: the same with the Trainer's own ``torch_compile=True``;
- ``trainer_flatten``: ``Trainer`` with ``DataCollatorWithFlattening`` (each batch one row, position_ids
  restart per document; sdpa masks across documents from them in transformers v5);
- ``trainer_padded``: ``Trainer``, documents truncated to ``--seq-len`` and padded to the longest in
  each batch (``DataCollatorForLanguageModeling``): the padding costs compute but teaches nothing;
- ``torch_loop``: a plain PyTorch loop (fused AdamW, clipping, same schedule shape) on the same packed
  blocks: the floor of framework overhead.

Each process first runs ``--warmup-steps`` steps (dropped; they include the compilation of the compiled
variants), then times ``--steps`` steps wall to wall (data loading, logging and optimizer included). Keep
the timed window several seconds long: with 8 steps of ~0.2 s one scheduler hiccup moves a round by 10%. Throughput = sum of tokens / sum of seconds; the JSON
has per-round ratios (median, min, max) against ``trainer_packed``, useful (non-padding) tokens/s and
the padding fraction, per precision (fp32; bf16: our bf16 weights with fp32 master copy in DeepSpeed,
the Trainer's ``bf16=True`` autocast, autocast in the plain loop) and per data mix.

    PATENTGPT_SHARED_DATA=../shared/data python bench/train_throughput.py --out bench/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
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
MODEL = ["model.hidden_size=256", "model.intermediate_size=688", "model.num_layers=4", "model.num_heads=8",
         "model.num_kv_heads=8", "model.max_position_embeddings=4096"]
FILES = ["uspto_fulltext.jsonl", "historical_us_ocr.jsonl", "patentsview_abstracts.jsonl",
         "tfh_annotated_abstracts.jsonl"]
VARIANTS = ["patentgpt", "patentgpt_autocast", "patentgpt_compile", "patentgpt_autocast_compile", "trainer_packed",
            "trainer_packed_compile", "trainer_flatten", "trainer_padded", "torch_loop"]
LR, WARMUP_LR_STEPS = 2e-3, 2


def load_texts(limit: int, mix: str) -> tuple[list[str], str]:
    """Real patent text of varied lengths. ``files``: up to limit/3 records from each of the long full
    texts, the long historical OCR and the short abstracts (the files hold 13, 1000 and 6186);
    ``records``: a uniform sample of every English patent record in the shared data (the corpus's own
    length distribution). The demo corpus when the shared data is absent."""
    from patentgpt.data.tokenize import read_jsonl

    paths = [SHARED / "patents/en" / f for f in FILES]
    if not all(p.is_file() for p in paths):
        corpus = REPO / "patentgpt/assets/demo_corpus"
        return list(read_jsonl(sorted(corpus.glob("*.jsonl")))), "demo corpus (shared data absent)"
    if mix == "files":
        texts, counts = [], []
        for p in paths[:3]:
            part = list(read_jsonl([p]))[: limit // 3]
            texts += part
            counts.append(f"{p.stem} {len(part)}")
        random.Random(0).shuffle(texts)
        return texts, "shared patents, up to an equal share per file: " + ", ".join(counts)
    texts = list(read_jsonl(paths))
    random.Random(0).shuffle(texts)
    return texts[:limit], "shared patents, uniform sample of all English patent records"


def pretrain_config(work: Path, args, precision: str, steps: int, every: int, autocast: bool = False,
                    compile: bool = False):
    from patentgpt.config import load_config
    from patentgpt.train.config import PretrainConfig

    return load_config(PretrainConfig, REPO / "configs/pretrain/demo_dense.yaml", [
        *MODEL, f"data.tokenizer={work / 'tok'}", f"data.sources=[{{name: p, path: {work / 'shards'}}}]",
        f"data.seq_len={args.seq_len}", f"run.output_dir={work / 'runs'}", f"run.name=ours-{os.getpid()}",
        f"train.max_steps={steps}", f"train.micro_batch_size={args.batch}", f"train.global_batch_size={args.batch}",
        f"train.precision={precision}", f"train.compile={str(compile).lower()}", f"optim.lr={LR}",
        f"train.autocast={str(autocast).lower()}",
        f"optim.warmup_steps={WARMUP_LR_STEPS}", f"logging.every_steps={every}", "logging.wandb.mode=disabled",
        "checkpoint.every_steps=100000", "checkpoint.export_at_end=false", "eval.holdout=0",
        "deepspeed.zero_stage=0", f"model.vocab_size={args.vocab}"])


# -- children: one variant, warm-up then timed steps; the last stdout line is the JSON result ------------

def child_patentgpt(work: Path, args, autocast: bool = False, compile: bool = False) -> dict:
    import shutil

    from patentgpt.train.stages import run_stage

    # logging every `warmup_steps` steps: the first record closes the warm-up, the rest are timed
    every = args.warmup_steps
    if args.steps % every:
        raise SystemExit("--steps must be a multiple of --warmup-steps (the logging interval of our run)")
    cfg = pretrain_config(work, args, "fp32" if autocast else args.precision, args.warmup_steps + args.steps, every,
                          autocast=autocast, compile=compile)
    run_stage("pretrain", cfg)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir, ignore_errors=True)
    timed = [r for r in rows if r["step"] > args.warmup_steps and "tokens_per_sec" in r]
    tokens = args.steps * args.batch * args.seq_len
    seconds = sum(every * args.batch * args.seq_len / r["tokens_per_sec"] for r in timed)
    return {"tokens": tokens, "useful": tokens, "seconds": seconds, "peak": rows[0].get("peak_tflops")}


def _model(work: Path, args):
    import torch

    from patentgpt.model.build import build_model

    torch.manual_seed(0)
    cfg = pretrain_config(work, args, "fp32", 1, 1)
    return build_model(cfg.model, args.vocab)


def _tokenized(work: Path, args, truncate: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "tok")
    texts = [json.loads(ln)["text"] for ln in (work / "texts.jsonl").read_text().splitlines()]
    if truncate:
        return tok, tok(texts, truncation=True, max_length=args.seq_len, add_special_tokens=False)["input_ids"]
    return tok, [ids + [tok.eos_token_id] for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def packed_blocks(work: Path, args) -> list[list[int]]:
    """run_clm's ``group_texts``: every document (with EOS) concatenated, cut into ``seq_len`` blocks."""
    _, docs = _tokenized(work, args, truncate=False)
    flat = [t for d in docs for t in d]
    n = len(flat) // args.seq_len * args.seq_len
    return [flat[i:i + args.seq_len] for i in range(0, n, args.seq_len)]


class StepClock:
    """Wall time from the end of the last warm-up step to the end of the last timed step, and the
    tokens (all, and non-padding) the timed steps saw."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.t0, self.t1 = warmup, 0, None, None
        self.tokens, self.useful, self.pending = 0, 0, []

    def batch(self, input_ids, attention_mask=None) -> None:
        self.pending.append((input_ids.numel(), int(attention_mask.sum()) if attention_mask is not None
                             else input_ids.numel()))

    def step_end(self) -> None:
        self.steps += 1
        done = self.pending
        self.pending = []
        if self.steps == self.warmup:
            self.t0 = time.perf_counter()
        elif self.steps > self.warmup:
            self.t1 = time.perf_counter()
            self.tokens += sum(a for a, _ in done)
            self.useful += sum(b for _, b in done)

    def result(self) -> dict:
        return {"tokens": self.tokens, "useful": self.useful, "seconds": self.t1 - self.t0}


def child_trainer(work: Path, args, collate: str, compile: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (DataCollatorForLanguageModeling, DataCollatorWithFlattening, Trainer, TrainerCallback,
                              TrainingArguments, default_data_collator)

    clock = StepClock(args.warmup_steps)
    if collate == "packed":
        blocks = packed_blocks(work, args)
        ds = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
        base = default_data_collator
    else:
        tok, docs = _tokenized(work, args, truncate=True)
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token or tok.eos_token
        ds = Dataset.from_dict({"input_ids": docs})
        base = (DataCollatorWithFlattening() if collate == "flatten"
                else DataCollatorForLanguageModeling(tok, mlm=False))

    def counting(features):
        batch = base(features)
        clock.batch(batch["input_ids"], batch.get("attention_mask"))
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.step_end()

    targs = TrainingArguments(output_dir=str(work / f"trainer-{os.getpid()}"), per_device_train_batch_size=args.batch,
                              max_steps=args.warmup_steps + args.steps, learning_rate=LR,
                              warmup_steps=WARMUP_LR_STEPS, logging_steps=args.warmup_steps, save_strategy="no",
                              report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
                              disable_tqdm=True, bf16=args.precision == "bf16", weight_decay=0.1,
                              adam_beta2=0.95, lr_scheduler_type="cosine", remove_unused_columns=False,
                              torch_compile=compile)
    Trainer(model=_model(work, args), args=targs, train_dataset=ds, data_collator=counting,
            callbacks=[Clock()]).train()
    return clock.result()


def child_torch_loop(work: Path, args) -> dict:
    import contextlib

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(work, args).to(device).train()
    blocks = torch.tensor(packed_blocks(work, args))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), fused=True)
    total = args.warmup_steps + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP_LR_STEPS))
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    clock = StepClock(args.warmup_steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(total):
        ids = blocks[torch.randint(len(blocks), (args.batch,), generator=g)].to(device)
        clock.batch(ids)
        with autocast:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        clock.step_end()
    return clock.result()


def run_child(args) -> None:
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # libraries print; only our JSON line goes to stdout
    work = Path(args.work)
    v = args.child
    compile = v.endswith("_compile")
    v = v.removesuffix("_compile")
    out = (child_patentgpt(work, args, autocast=v == "patentgpt_autocast", compile=compile) if v.startswith("patentgpt")
           else child_torch_loop(work, args) if v == "torch_loop"
           else child_trainer(work, args, v.removeprefix("trainer_"), compile=compile))
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    print(json.dumps(out))


# -- parent: prepare data once, run the variants as alternating processes --------------------------------

def prepare(work: Path, texts: list[str], tok_dir: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    from patentgpt.data.shards import ShardWriter, TokenizerInfo
    from patentgpt.data.tokenize import tokenize_texts

    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tok_dir, work / "tok", dirs_exist_ok=True)
    (work / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    with ShardWriter(work / "shards", TokenizerInfo.from_tokenizer(tok)) as w:
        tokenize_texts(texts, tok, w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=32, help="timed steps per variant per round")
    p.add_argument("--warmup-steps", type=int, default=4, help="steps dropped at the start of every process")
    p.add_argument("--repeats", type=int, default=3, help="rounds (one process per variant per round)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--docs", type=int, default=1500)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    p.add_argument("--mix", default="records", choices=["files", "records"], help="data of the full comparison")
    p.add_argument("--padding-mixes", nargs="*", choices=["files", "records"], default=["files"],
                   help="further mixes on which only patentgpt and trainer_padded run (useful tokens/s)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--precision-child", dest="precision_child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.precision = args.precision_child
        return run_child(args)

    from harness import compare, emit, subprocess_variant

    from patentgpt.demo import build_tokenizer
    from patentgpt.model.build import DTYPES
    from patentgpt.model.flops import flops_per_token, run_peak

    out: dict = {"settings": {k: getattr(args, k) for k in ("steps", "warmup_steps", "repeats", "seq_len", "batch",
                                                             "docs", "vocab")}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = build_tokenizer(Path(tmp) / "tok", vocab_size=args.vocab)
        mixes = [args.mix, *[m for m in args.padding_mixes if m != args.mix]]
        data = {}
        for mix in mixes:
            texts, source = load_texts(args.docs, mix)
            prepare(Path(tmp) / mix, texts, tok_dir)
            data[mix] = {"data": source, "docs": len(texts)}
        cfg = pretrain_config(Path(tmp) / args.mix, args, "fp32", 1, 1)
        from patentgpt.model.build import build_model

        out["flops_per_token"] = flops_per_token(build_model(cfg.model, args.vocab).config, args.seq_len)

        def variant(name: str, mix: str, precision: str):
            cmd = [sys.executable, __file__, "--child", name, "--work", str(Path(tmp) / mix),
                   "--precision-child", precision, "--steps", str(args.steps), "--warmup-steps",
                   str(args.warmup_steps), "--seq-len", str(args.seq_len), "--batch", str(args.batch),
                   "--vocab", str(args.vocab)]
            return subprocess_variant(cmd, work="tokens")

        for precision in args.precision:
            peak = run_peak(None, DTYPES[precision])
            names = [n for n in args.variants if precision == "bf16" or not n.startswith("patentgpt_autocast")]
            plan = [(args.mix, names)] + [(m, [v for v in ("patentgpt", "trainer_padded")
                                                        if v in args.variants]) for m in mixes[1:]]
            for mix, names in plan:
                if len(names) < 2:
                    continue
                variants = {n: variant(n, mix, precision) for n in names}
                baseline = next((b for b in ("trainer_packed", "trainer_padded") if b in names), names[-1])
                print(f"[bench] {precision} / {mix}: {', '.join(names)}", file=sys.stderr, flush=True)
                res = compare(variants, baseline=baseline, repeats=args.repeats, warmup=0, unit="tokens")
                per = {}
                for n, v in variants.items():
                    tokens = sum(r["tokens"] for r in v.records)
                    useful = sum(r["useful"] for r in v.records)
                    secs = sum(r["seconds"] for r in v.records)
                    per[n] = {"tokens_per_s": round(tokens / secs, 1), "useful_tokens_per_s": round(useful / secs, 1),
                              "padding_fraction": round(1 - useful / tokens, 4),
                              "tflops_useful": round(useful / secs * out["flops_per_token"] / 1e12, 4),
                              "mfu_useful": round(useful / secs * out["flops_per_token"] / peak.flops, 4)}
                useful_ratio = {n: round(per[n]["useful_tokens_per_s"] / per[baseline]["useful_tokens_per_s"], 3)
                                for n in names if n != baseline}
                out["runs"][f"{precision}/{mix}"] = {"precision": precision, "mix": mix, **data[mix],
                                                     "peak": peak.record(), **res, "variants": per,
                                                     "useful_ratio_vs_baseline": useful_ratio}
    targets = {}
    for precision in args.precision:
        run = out["runs"].get(f"{precision}/{args.mix}", {})
        if run.get("baseline") != "trainer_packed":
            continue
        for name, r in run["ratio_vs_baseline"].items():
            if name.startswith("patentgpt"):
                targets[f"{precision}: {name} >= 1.05x trainer_packed (median ratio)"] = r["median"] >= 1.05
    out["targets"] = targets
    emit(out, out=args.out)


if __name__ == "__main__":
    main()
