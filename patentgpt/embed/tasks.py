"""Run one task definition on one model: retrieval (+ BM25 fusion), classification, clustering,
similarity. Each run returns a result dict; :mod:`patentgpt.embed.report` writes it out."""

from __future__ import annotations

import time

import numpy as np

from patentgpt.config import ConfigError
from patentgpt.embed import fusion, metrics
from patentgpt.embed.extract import CrossScorer, PairEnsemble
from patentgpt.embed.taskdef import TaskConfig, label_list, read_task_pairs, resolve
from patentgpt.embed.views import record_id, render_view


def load_records(cfg: TaskConfig) -> tuple[list[tuple[str, dict]], list[dict]]:
    """(id, record) of the task's JSONL files, up to ``limit``; unusable lines set aside with a reason."""
    from patentgpt.data.jsonl import iter_jsonl

    out, rejects, seen = [], [], set()
    for path in map(resolve, cfg.data):
        for lineno, record, reason in iter_jsonl(path):
            rid = record_id(record) if record is not None else None
            reason = reason or ("no_id" if rid is None else "duplicate_id" if rid in seen else None)
            if reason:
                rejects.append({"file": path.name, "line": lineno, "reason": reason})
                continue
            seen.add(rid)
            out.append((rid, record))
    if cfg.limit is not None:
        out = out[: cfg.limit]
    return out, rejects


def _texts(records, view: str, markers: bool, rejects: list, why: str):
    keep, texts = [], []
    for rid, rec in records:
        text = render_view(rec, view, markers)
        if text.strip():
            keep.append((rid, rec))
            texts.append(text)
        else:
            rejects.append({"id": rid, "reason": why})
    return keep, texts


def use_markers(cfg: TaskConfig, embedder) -> bool:
    """Our decoders were pretrained on text with the IP tokenizer's section markers; other encoders were not."""
    info = getattr(embedder, "info", None)
    return cfg.markers if cfg.markers is not None else bool(info and info.decoder)


def _judged_queries(cfg: TaskConfig, markers: bool, doc_ids: list[str], rejects: list):
    """Queries of ``cfg.queries`` judged in ``cfg.qrels``: ([(qid, record)], texts, qrels). Bad lines,
    judgements of unknown queries or documents, and queries without a relevant document are set aside."""
    from patentgpt.embed.qrels import read_qrels, read_queries

    pairs, rej = read_queries(resolve(cfg.queries), cfg.query_view, markers)
    rejects += rej
    qrels, rej = read_qrels(resolve(cfg.qrels), [q for q, _, _ in pairs], doc_ids)
    rejects += rej
    queries, texts = [], []
    for qid, text, record in pairs:
        if any(rel > 0 for rel in qrels.get(qid, {}).values()):
            queries.append((qid, record))
            texts.append(text)
        else:
            rejects.append({"id": qid, "reason": "no_relevant_judgement"})
    return queries, texts, qrels


def run_retrieval(cfg: TaskConfig, embedder, encode_kw: dict) -> dict:
    records, rejects = load_records(cfg)
    markers = use_markers(cfg, embedder)
    docs, doc_texts = _texts(records, cfg.view, markers, rejects, f"empty_{cfg.view}")
    doc_ids = [rid for rid, _ in docs]
    parts = {rid: cfg.split.part(rec, rid) for rid, rec in docs}
    if cfg.qrels:
        queries, query_texts, qrels = _judged_queries(cfg, markers, doc_ids, rejects)
    else:  # each held-out record's query_view must find its own view
        queries, query_texts = _texts([(r, rec) for r, rec in docs if parts[r] == "test"], cfg.query_view,
                                      markers, rejects, f"empty_{cfg.query_view}")
        qrels = {q: {q: 1} for q, _ in queries}
    query_ids = [rid for rid, _ in queries]
    d = embedder.encode(doc_texts, prefix=cfg.prefix, normalize=True, desc=f"{cfg.name} docs", **encode_kw)
    q = embedder.encode(query_texts, prefix=cfg.query_prefix, normalize=True, desc=f"{cfg.name} queries", **encode_kw)
    rankings = {"dense": q @ d.T}
    if cfg.bm25:
        lexical = fusion.bm25_scores(query_texts, doc_texts)
        rankings |= {"bm25": lexical, "interpolation": fusion.interpolate(rankings["dense"], lexical, cfg.fusion_alpha),
                     "rrf": fusion.rrf(rankings["dense"], lexical, k=cfg.rrf_k)}
    subsets = {"all": None}
    if cfg.domain is not None:
        seen = {c for rid, rec in docs if parts[rid] == "train"
                for c in label_list(rec, cfg.domain.field, cfg.domain.chars)}
        ind = [rid for rid, rec in queries if seen & set(label_list(rec, cfg.domain.field, cfg.domain.chars))]
        subsets |= {"in_domain": ind, "out_of_domain": sorted(set(query_ids) - set(ind))}
    scores = {}
    for name, s in rankings.items():
        per_query = metrics.retrieval(s, query_ids, doc_ids, qrels)
        scores[name] = {sub: metrics.mean_measures(per_query, ids) for sub, ids in subsets.items()}
    return {"metrics": scores, "headline": {"ndcg@10": scores["dense"]["all"]["ndcg@10"]},
            "queries": len(query_ids), "documents": len(doc_ids), "rejects": rejects}


def _labelled(cfg: TaskConfig, embedder, rejects: list):
    records, rej = load_records(cfg)
    rejects += rej
    keep, texts = _texts(records, cfg.view, use_markers(cfg, embedder), rejects, f"empty_{cfg.view}")
    labels = [label_list(rec, cfg.labels, cfg.label_chars) for _, rec in keep]
    return keep, texts, labels


def run_classification(cfg: TaskConfig, embedder, encode_kw: dict) -> dict:
    rejects = []
    keep, texts, labels = _labelled(cfg, embedder, rejects)
    parts = [cfg.split.part(rec, rid) for rid, rec in keep]
    train = [i for i, p in enumerate(parts) if p == "train" and labels[i]]
    counts = {}
    for i in train:
        for c in labels[i]:
            counts[c] = counts.get(c, 0) + 1
    kept = {c for c, n in counts.items() if n >= cfg.min_label_count}
    sets = {"train": [], "test": []}
    for i, p in enumerate(parts):
        ys = [c for c in labels[i] if c in kept]
        if not ys:
            rejects.append({"id": keep[i][0], "reason": "no_label_with_enough_training_examples"})
        elif p in sets:
            sets[p].append(i)
    x = embedder.encode(texts, prefix=cfg.prefix, normalize=True, desc=cfg.name, **encode_kw)
    y = [[c for c in ys if c in kept] for ys in labels]
    scores = metrics.classification(x[sets["train"]], [y[i] for i in sets["train"]],
                                    x[sets["test"]], [y[i] for i in sets["test"]])
    return {"metrics": scores, "headline": {"micro_f1": scores["micro_f1"], "macro_f1": scores["macro_f1"]},
            "rejects": rejects}


def run_clustering(cfg: TaskConfig, embedder, encode_kw: dict) -> dict:
    rejects = []
    keep, texts, labels = _labelled(cfg, embedder, rejects)
    idx = [i for i, ys in enumerate(labels) if ys]
    rejects += [{"id": keep[i][0], "reason": "no_label"} for i, ys in enumerate(labels) if not ys]
    x = embedder.encode([texts[i] for i in idx], prefix=cfg.prefix, normalize=True, desc=cfg.name, **encode_kw)
    scores = metrics.clustering(x, [labels[i][0] for i in idx])
    return {"metrics": scores, "headline": {"v_measure": scores["v_measure"], "ari": scores["ari"]},
            "rejects": rejects}


def run_similarity(cfg: TaskConfig, embedder, encode_kw: dict) -> dict:
    rows, rejects = read_task_pairs(cfg)
    test = [r for r in rows if r["part"] == cfg.eval_part][: cfg.limit]
    gold = np.array([r["score"] for r in test])
    blend = cfg.blend and cfg.eval_part == "test"   # fitted on dev; a dev-scored run (model choice) stays raw
    dev = [r for r in rows if r["part"] == "dev"][: cfg.limit] if blend else []
    if blend and not dev:
        raise ConfigError(f"blend: {cfg.name} has no dev pairs to fit the blend on (split.dev_fraction "
                          f"{cfg.split.dev_fraction} left none in its data)")
    pred, members = predict_pairs(cfg, embedder, test, encode_kw)
    extra = {"members": [m | metrics.pair_scores(p, gold) for m, p in members]} if members else {}
    if blend:
        from patentgpt.embed.blend import fit_blend

        dcfg = cfg.model_copy(update={"eval_part": "dev"})
        extra["before_blend"] = metrics.pair_scores(pred, gold)
        pred, extra["blend"] = fit_blend(cfg.blend, dev, predict_pairs(dcfg, embedder, dev, encode_kw)[0], test, pred)
    scores = metrics.pair_scores(pred, gold)
    return {"metrics": scores, "headline": {"pearson": scores["pearson"], "spearman": scores["spearman"]},
            "rejects": rejects, **extra}


def predict_pairs(cfg: TaskConfig, embedder, rows: list[dict], encode_kw: dict) -> tuple[np.ndarray, list]:
    """The scores of ``rows`` (pairs of ``cfg.eval_part``), and for an ensemble each member's (info, scores)."""
    if not isinstance(embedder, PairEnsemble):
        return pair_predictions(cfg, embedder, rows, encode_kw), []
    members, views = [], {}
    for scorer, task in embedder.members:
        if task not in views:   # members sharing a task read its rows once
            views[task] = member_view(cfg, task, rows)
        mcfg, mrows = views[task]
        members.append(({"model": str(scorer.model_dir), "pooling": scorer.pooling, "task": task or cfg.name},
                        pair_predictions(mcfg, scorer, mrows, encode_kw)))
    return embedder.combine([p for _, p in members]), members


def pair_predictions(cfg: TaskConfig, scorer, rows: list[dict], encode_kw: dict) -> np.ndarray:
    """One score per (a, b) row: a cross-encoder scores each pair jointly, an encoder gives the cosine."""
    if isinstance(scorer, CrossScorer):
        return scorer.score_pairs([(r["a"], r["b"]) for r in rows], batch_size=encode_kw["batch_size"])
    texts = sorted({t for r in rows for t in (r["a"], r["b"])})
    emb = scorer.encode(texts, prefix=cfg.prefix, normalize=True, desc=cfg.name, **encode_kw)
    pos = {t: i for i, t in enumerate(texts)}
    return metrics.cosine(emb[[pos[r["a"]] for r in rows]], emb[[pos[r["b"]] for r in rows]])


TEMPLATE_KEYS = ("text_a", "text_b", "siblings", "prefix")


def member_view(cfg: TaskConfig, task: str | None, rows: list[dict]) -> tuple[TaskConfig, list[dict]]:
    """How an ensemble member reads ``rows``: ``cfg`` with the templates of similarity task ``task`` (same
    data, split and part), and the rows written with them: the same pairs in the same order, or a ConfigError."""
    if not task or task == cfg.name:
        return cfg, rows
    from patentgpt.embed.taskdef import find_tasks, load_task

    own = load_task(find_tasks([task])[0])
    if own.kind != "similarity":
        raise ConfigError(f"model: ensemble member task {task} is a {own.kind} task; a member reads pairs "
                          f"with a similarity task's templates")
    mcfg = cfg.model_copy(update={k: getattr(own, k) for k in TEMPLATE_KEYS})
    mine = [r for r in read_task_pairs(mcfg)[0] if r["part"] == cfg.eval_part][: cfg.limit]
    if [r["score"] for r in mine] != [r["score"] for r in rows]:
        raise ConfigError(f"model: ensemble member task {task} reads {len(mine)} {cfg.eval_part} pairs of "
                          f"{cfg.name}'s data, not the same {len(rows)}: its templates set other rows aside")
    return mcfg, mine


RUNNERS = {"retrieval": run_retrieval, "classification": run_classification, "clustering": run_clustering,
           "similarity": run_similarity}


def run_task(cfg: TaskConfig, embedder, *, batch_size: int = 32, dim: int | None = None) -> dict:
    """The task's result on ``embedder``; ``status: skipped`` (with the reason) when its data is absent."""
    base = {"task": cfg.name, "kind": cfg.kind, "model": str(embedder.model_dir), "pooling": embedder.pooling,
            "dim": dim}
    missing = cfg.missing()
    if missing:
        return base | {"status": "skipped", "reason": f"data not found: {', '.join(map(str, missing))}"}
    if isinstance(embedder, (CrossScorer, PairEnsemble)) and cfg.kind != "similarity":
        what = "a cross-encoder" if isinstance(embedder, CrossScorer) else "an ensemble"
        raise ConfigError(f"model: {embedder.model_dir} is {what}: it scores text pairs and gives no "
                          f"embeddings, so it cannot run {cfg.kind} task {cfg.name}; use it on similarity tasks")
    t0 = time.time()
    result = RUNNERS[cfg.kind](cfg, embedder, {"batch_size": batch_size, "dim": dim})
    return base | {"status": "ok", "seconds": round(time.time() - t0, 2)} | result

