"""``patentgpt data ...``: corpus tokenization into shards (and the corpus pipeline)."""

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


def _tokenize(args) -> int:
    from patentgpt.data.tokenize import tokenize_jsonl

    summary = tokenize_jsonl(args.input, args.tokenizer, args.out, text_field=args.text_field,
                             overwrite=args.overwrite)
    print(f"wrote {summary['num_docs']} documents, {summary['num_tokens']} tokens to {args.out}"
          f" ({summary['rejected']} rejected, see {summary['rejects_file']})")
    return 0
