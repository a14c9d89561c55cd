"""``patentgpt demo``: the whole path on the embedded bilingual demo corpus, on CPU.

IP tokenizer (configs/tokenizer/demo.yaml) -> corpus pipeline: clean, filter, dedup, synthesize
instructions, tokenize into stage mixtures (configs/data/demo.yaml) -> stage-1 pretraining of a
tiny dense LLaMA (configs/pretrain/demo_dense.yaml) -> export -> generation from the export.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "assets" / "demo_corpus"
TOKENIZER_CONFIG = REPO / "configs" / "tokenizer" / "demo.yaml"
DATA_CONFIG = REPO / "configs" / "data" / "demo.yaml"
DEMO_CONFIG = REPO / "configs" / "pretrain" / "demo_dense.yaml"
PROMPTS = ["<|title|>A battery", "<|title|>一种"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the embedded corpus (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="where every artifact goes")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="pretraining config of the demo model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the pretraining config")
    p.add_argument("--vocab-size", type=int, default=3000)
    p.set_defaults(func=_demo)


def build_tokenizer(out: Path, vocab_size: int) -> Path:
    """Train the demo IP tokenizer (configs/tokenizer/demo.yaml) into ``out``; returns its HF dir."""
    from patentgpt.config import load_config
    from patentgpt.tokenizer.config import TokenizerTrainConfig, train_from_config

    inputs = ", ".join(f"{{path: '{f}'}}" for f in sorted(CORPUS.glob("*.jsonl")))
    cfg = load_config(TokenizerTrainConfig, TOKENIZER_CONFIG,
                      [f"output_dir={out}", f"vocab_size={vocab_size}", f"inputs=[{inputs}]"])
    return Path(train_from_config(cfg)["hf_dir"])


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
    from patentgpt.data.pipeline.config import DataPipelineConfig
    from patentgpt.data.pipeline.runner import run_pipeline
    from patentgpt.io import atomic_write_json
    from patentgpt.train.config import PretrainConfig
    from patentgpt.train.pretrain import run_pretraining

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = out / "tokenizer" / "hf"
    data_cfg = load_config(DataPipelineConfig, DATA_CONFIG, [
        f"output_dir={out / 'data'}", f"input_root={CORPUS}", f"mixtures.tokenizer={tokenizer_dir}"])
    mixture = out / "data" / "mixtures" / "stage1" / "mixture.yaml"
    overrides = [f"data.tokenizer={tokenizer_dir}", f"data.mixture={mixture}",
                 f"run.output_dir={out / 'runs'}", "checkpoint.resume=never", *args.overrides]
    # Validate the pretraining config before any work; data.mixture can only be resolved once the
    # pipeline has written it, so the full config is loaded again after step 2.
    load_config(PretrainConfig, args.config, [o for o in overrides if not o.startswith("data.mixture=")])

    print("== 1/4 IP tokenizer", flush=True)
    build_tokenizer(out / "tokenizer", args.vocab_size)
    print("== 2/4 corpus pipeline: clean, filter, dedup, synthesize, tokenize into mixtures", flush=True)
    data_report = run_pipeline(data_cfg)
    print("== 3/4 stage-1 pretraining", flush=True)
    cfg = load_config(PretrainConfig, args.config, overrides)
    summary = run_pretraining(cfg)
    losses = summary["losses"]
    print("== 4/4 generation from the exported model", flush=True)
    samples = generate(Path(summary["export_dir"]), PROMPTS)
    run_dir = Path(summary["run_dir"])
    report = {
        "tokenizer": str(tokenizer_dir),
        "data": {"report": str(out / "data" / "report.json"), "data_card": str(out / "data" / "card"),
                 "mixture": str(mixture), "records_read": data_report["total"]["read"],
                 "records_kept": data_report["total"]["kept"], "removed": data_report["total"]["removed"],
                 "stages": data_report.get("stages"), "sft_examples": str(out / "data" / "synth" / (data_report.get("synth") or {}).get("output", ""))},
        "run_dir": str(run_dir),
        "config": str(run_dir / "config.yaml"),
        "metrics": str(run_dir / "metrics.jsonl"),
        "loss_curve": str(run_dir / "loss.png"),
        "checkpoint": summary["final_checkpoint"],
        "export": summary["export_dir"],
        "export_max_logit_diff": summary.get("export_max_logit_diff"),
        "loss_first_step": losses[0][1],
        "loss_last_step": losses[-1][1],
        "samples": samples,
        "seconds": round(time.time() - t0, 1),
    }
    from patentgpt.embed.demo import demo_embed
    report["embeddings"] = demo_embed({"demo-decoder": Path(summary["export_dir"])}, out / "embed")
    atomic_write_json(out / "demo_report.json", report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"demo finished in {report['seconds']} s; report: {out / 'demo_report.json'}")
    return 0
