"""``patentgpt data ...``: corpus tokenization into shards, and the corpus pipeline (``data run``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="corpus tokenization and processing")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    tok = dsub.add_parser("tokenize", help="JSONL records -> token shards")
    tok.add_argument("--input", nargs="+", required=True, help="JSONL files (text or structured patents)")
    tok.add_argument("--tokenizer", required=True, help="HF tokenizer directory")
    tok.add_argument("--out", required=True, help="output shard directory")
    tok.add_argument("--text-field", default="text")
    tok.add_argument("--overwrite", action="store_true")
    tok.set_defaults(func=_tokenize)

    run = dsub.add_parser("run", help="run a corpus pipeline config: ingest, clean, filter, dedup, ... shards")
    run.add_argument("config", help="pipeline config (configs/data/*.yaml)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted override, e.g. --set mixtures.tokenizer=runs/demo/tokenizer")
    run.add_argument("--force-step", dest="force_steps", action="append", default=[], metavar="NAME",
                     help="redo this step (and every step after it) even if it finished before")
    run.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    run.set_defaults(func=_run)

    prefs = dsub.add_parser("prefs", help="synthetic preference pairs from synthesized instructions (reward-model demo)")
    prefs.add_argument("--input", required=True, help="the pipeline's synth/sft_synth.jsonl")
    prefs.add_argument("--out", required=True, help="output JSONL of {messages, chosen, rejected, corruption}")
    prefs.add_argument("--seed", type=int, default=1234)
    prefs.set_defaults(func=_prefs)


def _tokenize(args) -> int:
    from patentgpt.data.tokenize import tokenize_jsonl

    summary = tokenize_jsonl(args.input, args.tokenizer, args.out, text_field=args.text_field,
                             overwrite=args.overwrite)
    print(f"wrote {summary['num_docs']} documents, {summary['num_tokens']} tokens to {args.out}"
          f" ({summary['rejected']} rejected, see {summary['rejects_file']})")
    return 0


def _run(args) -> int:
    import yaml

    from patentgpt.config import load_config, redact
    from patentgpt.data.pipeline.config import DataPipelineConfig
    from patentgpt.data.pipeline.runner import check_config, run_pipeline

    cfg = load_config(DataPipelineConfig, args.config, args.overrides)
    if args.check:
        check_config(cfg)
        print(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, allow_unicode=True))
        return 0
    run_pipeline(cfg, force_steps=tuple(args.force_steps))
    return 0


def _prefs(args) -> int:
    import json

    from patentgpt.data.prefs import make_preference_pairs

    print(json.dumps(make_preference_pairs(args.input, args.out, seed=args.seed), indent=2))
    return 0
