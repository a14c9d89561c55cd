"""``patentgpt demo``: the whole path on the embedded bilingual demo corpus, on CPU.

tokenizer -> shards -> stage-1 pretraining of a tiny dense model -> export -> generation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "assets" / "demo_corpus"
DEMO_CONFIG = REPO / "configs" / "pretrain" / "demo_dense.yaml"
PROMPTS = ["<|title|>A battery", "<|title|>一种"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the embedded corpus (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="where every artifact goes")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="pretraining config of the demo model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--vocab-size", type=int, default=3000)
    p.set_defaults(func=_demo)


def build_tokenizer(out: Path, vocab_size: int) -> Path:
    from patentgpt.data.tokenize import read_jsonl
    from patentgpt.tokenizer.hf import save_hf_tokenizer
    from patentgpt.tokenizer.symbols import load_symbols
    from patentgpt.tokenizer.train import train_sentencepiece

    texts = list(read_jsonl(sorted(CORPUS.glob("*.jsonl"))))
    sp_model = train_sentencepiece(texts=texts, model_prefix=out / "sp" / "demo", vocab_size=vocab_size,
                                   user_defined_symbols=load_symbols())
    return save_hf_tokenizer(sp_model, out / "tokenizer")


def build_shards(out: Path, tokenizer_dir: Path) -> dict[str, dict]:
    from patentgpt.data.tokenize import tokenize_jsonl

    groups = {"patents": ["patents_en.jsonl", "patents_zh.jsonl"], "ip_law": ["ip_law.jsonl"]}
    return {name: tokenize_jsonl([str(CORPUS / f) for f in files], str(tokenizer_dir),
                                 str(out / "shards" / name), overwrite=True)
            for name, files in groups.items()}


def generate(model_dir: Path, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    outs = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 repetition_penalty=1.2, pad_token_id=tok.eos_token_id)
        outs.append(tok.decode(gen[0], skip_special_tokens=False))
    return outs


def _demo(args) -> int:
    from patentgpt.config import load_config
    from patentgpt.train.config import PretrainConfig
    from patentgpt.train.pretrain import run_pretraining

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"data.tokenizer={out / 'tokenizer'}",
        f"data.sources=[{{name: demo_patents, path: {out / 'shards/patents'}, weight: 3.0}}, "
        f"{{name: demo_ip_law, path: {out / 'shards/ip_law'}, weight: 1.0}}]",
        f"run.output_dir={out / 'runs'}",
        "checkpoint.resume=never",
        *args.overrides,
    ]
    cfg = load_config(PretrainConfig, args.config, overrides)  # validate before any work

    print("== 1/4 tokenizer")
    tokenizer_dir = build_tokenizer(out, args.vocab_size)
    print("== 2/4 shards")
    shards = build_shards(out, tokenizer_dir)
    print("== 3/4 pretraining", cfg.run.name)
    summary = run_pretraining(cfg)
    losses = summary["losses"]
    print("== 4/4 generation from the exported model")
    samples = generate(Path(summary["export_dir"]), PROMPTS)
    run_dir = Path(summary["run_dir"])
    report = {
        "tokenizer": str(tokenizer_dir),
        "shards": {k: {"path": str(out / "shards" / k), "docs": v["num_docs"], "tokens": v["num_tokens"],
                       "rejected": v["rejected"]} for k, v in shards.items()},
        "run_dir": str(run_dir),
        "config": str(run_dir / "config.yaml"),
        "metrics": str(run_dir / "metrics.jsonl"),
        "loss_curve": str(run_dir / "loss.png"),
        "checkpoint": summary["final_checkpoint"],
        "export": summary["export_dir"],
        "loss_first_step": losses[0][1],
        "loss_last_step": losses[-1][1],
        "samples": samples,
        "seconds": round(time.time() - t0, 1),
    }
    from patentgpt.io import atomic_write_json

    atomic_write_json(out / "demo_report.json", report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"demo finished in {report['seconds']} s; report: {out / 'demo_report.json'}")
    return 0
