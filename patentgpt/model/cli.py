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

    up = msub.add_parser("upcycle", help="dense LLaMA -> Mixtral MoE whose experts start as copies of the dense FFN")
    up.add_argument("--model", required=True, help="dense LLaMA model directory (e.g. a pretraining export)")
    up.add_argument("--experts", type=int, default=8, help="experts per layer (default 8)")
    up.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    up.add_argument("--out", required=True, help="output MixtralForCausalLM directory")
    up.add_argument("--noise", type=float, default=0.0, help="Gaussian noise on each expert copy, as a fraction "
                                                             "of the weight's std (default 0: exact copies)")
    up.add_argument("--reinit-fraction", type=float, default=0.0, help="fraction of each expert's intermediate "
                                                                       "neurons re-initialised (Drop-Upcycling)")
    up.add_argument("--router-std", type=float, default=1e-3, help="std of the router's initial weights")
    up.add_argument("--seed", type=int, default=0)
    up.set_defaults(func=_upcycle)


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


def _upcycle(args) -> int:
    from patentgpt.model.upcycle import upcycle

    report = upcycle(args.model, args.out, args.experts, args.top_k, noise=args.noise,
                     reinit_fraction=args.reinit_fraction, router_std=args.router_std, seed=args.seed)
    print(json.dumps(report, indent=2))
    print(f"upcycled model: {args.out} (max |logit diff| vs dense {report['max_logit_diff']:.2e}); continue "
          f"pretraining with model.arch: mixtral, model.init_from: {args.out}")
    return 0
