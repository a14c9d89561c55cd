"""``patentgpt demo``: the whole path on the embedded bilingual demo corpus, on CPU.

IP tokenizer (configs/tokenizer/demo.yaml) -> corpus pipeline: clean, filter, dedup, synthesize
instructions, tokenize into stage mixtures (configs/data/demo.yaml) -> stage-1 pretraining of a
tiny dense LLaMA (configs/pretrain/demo_dense.yaml) -> export -> generation from the export ->
SFT on the synthesized instructions (configs/sft/demo.yaml) -> a reward model on synthetic
preference pairs made from them (configs/rm/demo.yaml) -> PPO of the SFT model against that
reward model (configs/ppo/demo.yaml). Every training stage runs on the same
core (patentgpt/train/trainer.py).
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
SFT_CONFIG = REPO / "configs" / "sft" / "demo.yaml"
RM_CONFIG = REPO / "configs" / "rm" / "demo.yaml"
PROMPTS = ["<|title|>A battery", "<|title|>一种"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the embedded corpus (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="where every artifact goes")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="pretraining config of the demo model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the pretraining config")
    p.add_argument("--align-set", dest="overrides_align", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the SFT and reward-model configs (e.g. train.max_steps=20)")
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


def chat(model_dir: Path, user: str, max_new_tokens: int = 40) -> str:
    """The SFT export's greedy answer to one user message, through its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.2,
                             pad_token_id=tok.eos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _first_last(evals: list, key: str) -> dict:
    return {"before": evals[0][1].get(key), "after": evals[-1][1].get(key), "steps": [s for s, _ in evals]}


def align(out: Path, export: Path, synth_file: Path, overrides: list[str]) -> dict:
    """SFT of the pretraining export on the synthesized instructions, then a reward model on
    synthetic preference pairs; returns the report section."""
    from patentgpt.config import load_config
    from patentgpt.data.prefs import make_preference_pairs
    from patentgpt.train.config import RewardConfig, SFTConfig
    from patentgpt.train.stages import run_stage

    common = [f"run.output_dir={out / 'runs'}", "checkpoint.resume=never", *overrides]
    print("== 5/9 SFT on the synthesized IP instructions (assistant-only loss, packed)", flush=True)
    sft_cfg = load_config(SFTConfig, SFT_CONFIG, [f"model.init_from={export}", *common,
                                                  f"data.sources=[{{name: ip_instructions, path: {synth_file}}}]"])
    sft = run_stage("sft", sft_cfg)
    print("== 6/9 reward model on synthetic preference pairs", flush=True)
    prefs = make_preference_pairs(synth_file, out / "data" / "prefs" / "ip_prefs.jsonl")
    rm_cfg = load_config(RewardConfig, RM_CONFIG, [f"model.init_from={sft['export_dir']}", *common,
                                                   f"data.sources=[{{name: ip_prefs, path: {prefs['out']}}}]"])
    rm = run_stage("rm", rm_cfg)
    from patentgpt.train.stages.ppo.demo import run_ppo_demo

    ppo = run_ppo_demo(out, sft["export_dir"], rm["export_dir"], synth_file,
                       [o for o in overrides if o.startswith("logging.")])
    return {
        "ppo": ppo,
        "sft": {"run_dir": sft["run_dir"], "export": sft["export_dir"], "data": sft["data"],
                "val_loss": _first_last(sft["evals"], "val/loss"),
                "val_loss_en": _first_last(sft["evals"], "val/lang_en/loss"),
                "val_loss_zh": _first_last(sft["evals"], "val/lang_zh/loss"),
                "export_max_logit_diff": sft.get("export_max_logit_diff"),
                "answer": chat(Path(sft["export_dir"]), "Write a concise patent title that matches this abstract.\n\n"
                               "A battery management system monitors the impedance of each cell.")},
        "reward_model": {"run_dir": rm["run_dir"], "export": rm["export_dir"], "pairs": prefs, "data": rm["data"],
                         "val_accuracy": _first_last(rm["evals"], "val/accuracy"),
                         "val_margin": _first_last(rm["evals"], "val/margin"),
                         "export_max_logit_diff": rm.get("export_max_logit_diff")},
    }


def _demo(args) -> int:
    from patentgpt.config import load_config
    from patentgpt.data.pipeline.config import DataPipelineConfig
    from patentgpt.data.pipeline.runner import run_pipeline
    from patentgpt.io import atomic_write_json
    from patentgpt.train.config import PretrainConfig
    from patentgpt.train.stages import run_stage

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

    print("== 1/9 IP tokenizer", flush=True)
    build_tokenizer(out / "tokenizer", args.vocab_size)
    print("== 2/9 corpus pipeline: clean, filter, dedup, synthesize, tokenize into mixtures", flush=True)
    data_report = run_pipeline(data_cfg)
    print("== 3/9 stage-1 pretraining", flush=True)
    cfg = load_config(PretrainConfig, args.config, overrides)
    summary = run_stage("pretrain", cfg)
    losses = summary["losses"]
    print("== 4/9 generation from the exported model", flush=True)
    samples = generate(Path(summary["export_dir"]), PROMPTS)
    run_dir = Path(summary["run_dir"])
    synth_file = out / "data" / "synth" / (data_report.get("synth") or {}).get("output", "sft_synth.jsonl")
    alignment = align(out, Path(summary["export_dir"]), synth_file, args.overrides_align)
    print("== 8/9 evaluation (patent-bar true/false, MOZIP-format fixtures) and contamination report", flush=True)
    from patentgpt.eval.demo import demo_eval

    evals = demo_eval({"pretrained": Path(summary["export_dir"]), "sft": Path(alignment["sft"]["export"])},
                      out / "eval")
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
        **alignment,
        "eval": evals,
    }
    print("== 9/9 embeddings: MiniLM and the demo decoder on patent classification and retrieval", flush=True)
    from patentgpt.embed.demo import demo_embed

    report["embeddings"] = demo_embed({"demo-decoder": Path(summary["export_dir"])}, out / "embed")
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "demo_report.json", report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print(evidence(report))
    print(f"demo finished in {report['seconds']} s; report: {out / 'demo_report.json'}")
    return 0


def evidence(report: dict) -> str:
    """A few lines a person reads first: each stage's evidence."""
    from patentgpt.train.stages.ppo.demo import evidence_line as ppo_evidence

    sft, rm = report["sft"], report["reward_model"]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return "\n".join([
        "== evidence",
        f"pretraining loss      {f(report['loss_first_step'])} -> {f(report['loss_last_step'])}",
        f"SFT val loss (asst.)  {f(sft['val_loss']['before'])} -> {f(sft['val_loss']['after'])}"
        f"  (en {f(sft['val_loss_en']['before'])} -> {f(sft['val_loss_en']['after'])},"
        f" zh {f(sft['val_loss_zh']['before'])} -> {f(sft['val_loss_zh']['after'])})",
        f"reward model accuracy {f(rm['val_accuracy']['before'])} -> {f(rm['val_accuracy']['after'])} on held-out "
        f"synthetic pairs (margin {f(rm['val_margin']['before'])} -> {f(rm['val_margin']['after'])})",
        f"SFT answer: {sft['answer']!r}",
        *([ppo_evidence(report["ppo"])] if "ppo" in report else []),
    ])
