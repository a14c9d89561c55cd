"""``patentgpt model ...``: operations on HF model directories."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="operations on HF model directories")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")

    ext = msub.add_parser("extend-vocab", help="grow a model's embeddings and LM head to a merged tokenizer")
    ext.add_argument("--model", required=True, help="HF model directory (safetensors)")
    ext.add_argument("--tokenizer", required=True, help="merged tokenizer directory (patentgpt tokenizer merge)")
    ext.add_argument("--out", required=True, help="output model directory")
    ext.add_argument("--base-tokenizer", help="the model's original tokenizer (dir or .model); default: the "
                                              "tokenizer.model in --model")
    ext.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ext.set_defaults(func=_extend)

    chk = msub.add_parser("check-vocab", help="check a model's vocab_size against a tokenizer (no weights loaded)")
    chk.add_argument("--model", required=True, help="HF model directory")
    chk.add_argument("--tokenizer", help="tokenizer directory or SentencePiece .model file (default: the model "
                                         "directory); compared by identity (pieces' fingerprint), then size")
    chk.set_defaults(func=_check)


def _extend(args) -> int:
    from patentgpt.model.extend_vocab import extend_vocab

    report = extend_vocab(args.model, args.tokenizer, args.out, base_tokenizer=args.base_tokenizer, dtype=args.dtype)
    print(json.dumps(report, indent=2))
    print(f"extended model: {args.out}")
    return 0


def _check(args) -> int:
    from patentgpt.model.vocab import check_model_dir

    res = check_model_dir(args.model, args.tokenizer)
    print(f"ok: model vocab_size {res['model_vocab_size']}, tokenizer {res['tokenizer_size']} pieces "
          f"(fingerprint {res['fingerprint']}); identity: {res['identity']}")
    return 0
