"""``patentgpt tokenizer ...``: train, merge and report on IP tokenizers."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train, merge and report on tokenizers")
    tsub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="SUBCOMMAND")

    train = tsub.add_parser("train", help="train a SentencePiece BPE IP tokenizer from a config")
    train.add_argument("--config", required=True, help="YAML (e.g. configs/tokenizer/ip_zh_en.yaml)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set vocab_size=32000 (repeatable)")
    train.add_argument("--check", action="store_true", help="validate and print the resolved config, then stop")
    train.set_defaults(func=_train)

    merge = tsub.add_parser("merge", help="append an IP model's pieces to a base vocabulary")
    merge.add_argument("--base", required=True, help="base SentencePiece BPE model (e.g. LLaMA-2 tokenizer.model)")
    merge.add_argument("--add", required=True, help="SentencePiece model whose new pieces are appended")
    merge.add_argument("--out", required=True, help="output directory (tokenizer.model + HF files + merge_report.json)")
    merge.add_argument("--vocab-size", default="auto",
                       help="final size: a number (trim or pad to it), auto (round up to --pad-to-multiple; "
                            "default) or 0/none (no padding)")
    merge.add_argument("--pad-to-multiple", type=int, default=64)
    merge.add_argument("--prune-unreachable", choices=["auto", "yes", "no"], default="auto",
                       help="drop appended pieces BPE can never produce, making room for later ones; auto: "
                            "whenever the merged vocabulary has user-defined pieces (needed for an exact HF export)")
    merge.add_argument("--check-text", help="extra English text file for the segmentation-change check")
    merge.add_argument("--required-chars", action="append", metavar="SET",
                       help="characters that must be single pieces: gb2312-1 (3,755 level-1 hanzi), gb2312-2, "
                            "gb2312-symbols, gb2312, or a UTF-8 text file (repeatable); coverage goes to merge_report.json")
    merge.add_argument("--no-chat-template", action="store_true")
    merge.set_defaults(func=_merge)

    rep = tsub.add_parser("report", help="compression of tokenizers on text by language")
    rep.add_argument("--tokenizer", action="append", required=True, metavar="NAME=PATH",
                     help=".model file or HF tokenizer dir (repeatable)")
    rep.add_argument("--text", action="append", required=True, metavar="LANG=FILE",
                     help=".txt (a document per line) or .jsonl (repeatable)")
    rep.add_argument("--out", required=True, help="output directory (report.json, report.md, report.png)")
    rep.set_defaults(func=_report)


def _train(args) -> int:
    from patentgpt.config import load_config
    from patentgpt.tokenizer.config import TokenizerTrainConfig, train_from_config

    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    if args.check:
        from patentgpt.config import dump_redacted

        print(dump_redacted(cfg))
        return 0
    report = train_from_config(cfg)
    print(json.dumps({k: v for k, v in report.items() if k != "sources"}, indent=2, ensure_ascii=False))
    return 0


def _merge(args) -> int:
    from patentgpt.tokenizer.merge import merge_tokenizers, parse_vocab_size

    report = merge_tokenizers(args.base, args.add, args.out, vocab_size=parse_vocab_size(args.vocab_size),
                              pad_to_multiple=args.pad_to_multiple,
                              prune_unreachable={"auto": None, "yes": True, "no": False}[args.prune_unreachable],
                              check_text=args.check_text, chat_template=not args.no_chat_template,
                              required_chars=args.required_chars)
    eng = report["english_segmentation"]
    print(f"merged {report['base_size']:,} base + {report['appended']:,} appended + {report['padded']:,} reserved "
          f"= {report['vocab_size']:,} pieces -> {args.out}")
    print(f"dropped: {report['pruned_unreachable']:,} unreachable, {report['pruned_missing_chars']:,} with characters "
          f"outside the vocabulary, {report['trimmed']:,} trimmed; left in: {report['unreachable_appended']:,} "
          f"unreachable, {report['appended_with_missing_chars']:,} with missing characters")
    print(f"English check: {eng['words_changed']}/{eng['words']} words segment differently "
          f"({100 * eng['words_changed_fraction']:.2f}%), tokens {eng['base_tokens']} -> {eng['merged_tokens']}; "
          f"details in {args.out}/merge_report.json")
    req = report["required_chars"]
    if req:
        print(f"required characters: {req['single_piece']:,}/{req['chars']:,} single pieces "
              f"({report['required_chars_added']:,} added by the merge)"
              + (f"; not single pieces: {req['missing_examples']}" if req["missing_examples"] else ""))
    return 0


def _report(args) -> int:
    from patentgpt.tokenizer.report import parse_pairs, tokenizer_report

    report = tokenizer_report(parse_pairs(args.tokenizer, "--tokenizer"), parse_pairs(args.text, "--text"), args.out)
    for lang, per_tok in report["results"].items():
        for name, r in per_tok.items():
            print(f"{lang:>6} {name:>20}: {r['tokens']:>9,} tokens  {r['tokens_per_char']:.4f} tok/char  "
                  f"byte fallback {100 * r['byte_fallback_rate']:.2f}%")
    print(f"report: {args.out}/report.md, report.json, report.png")
    return 0
