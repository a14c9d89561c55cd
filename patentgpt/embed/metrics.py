"""Downstream metrics from kept libraries: pytrec_eval (TREC measures), scikit-learn, scipy."""

from __future__ import annotations

import numpy as np

RETRIEVAL_MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "map": "map"}


def retrieval(scores: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: dict[str, dict[str, int]],
              top_k: int = 100) -> dict[str, dict[str, float]]:
    """Per-query nDCG@10, recall@100 and MAP (pytrec_eval) over each query's top ``top_k`` documents."""
    import pytrec_eval

    k = min(top_k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    run = {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(query_ids)}
    evaluator = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in query_ids}, {"ndcg_cut.10", "recall.100", "map"})
    per_query = evaluator.evaluate(run)
    return {q: {name: per_query[q][key] for name, key in RETRIEVAL_MEASURES.items()} for q in query_ids}


def mean_measures(per_query: dict[str, dict[str, float]], subset: list[str] | None = None) -> dict[str, float]:
    qs = list(per_query) if subset is None else [q for q in subset if q in per_query]
    if not qs:
        return {name: float("nan") for name in RETRIEVAL_MEASURES} | {"queries": 0}
    return {name: float(np.mean([per_query[q][name] for q in qs])) for name in RETRIEVAL_MEASURES} | {"queries": len(qs)}


def classification(train_x, train_y: list[list[str]], test_x, test_y: list[list[str]], seed: int = 0) -> dict:
    """One-vs-rest logistic regression on frozen embeddings; micro and macro F1 on the test part.
    A test record whose scores all fall below 0.5 gets its single best label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    mlb = MultiLabelBinarizer()
    y_train = mlb.fit_transform(train_y)
    y_test = MultiLabelBinarizer(classes=mlb.classes_).fit_transform([[c for c in y if c in set(mlb.classes_)]
                                                                      for y in test_y])
    clf = OneVsRestClassifier(LogisticRegression(max_iter=2000, random_state=seed)).fit(train_x, y_train)
    proba = clf.predict_proba(test_x)
    pred = (proba >= 0.5).astype(int)
    empty = pred.sum(1) == 0
    pred[np.flatnonzero(empty), proba[empty].argmax(1)] = 1
    return {"micro_f1": float(f1_score(y_test, pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
            "labels": len(mlb.classes_), "train": len(train_y), "test": len(test_y)}


def clustering(x, labels: list[str], seed: int = 0) -> dict:
    """k-means with k = the number of distinct labels; V-measure and ARI against the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, v_measure_score

    k = len(set(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return {"v_measure": float(v_measure_score(labels, pred)), "ari": float(adjusted_rand_score(labels, pred)),
            "clusters": k, "records": len(labels)}


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine of two embedding matrices."""
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def pair_scores(pred, gold) -> dict:
    """Pearson and Spearman of predicted pair scores (cosines, cross-encoder outputs) against gold scores."""
    from scipy.stats import pearsonr, spearmanr

    return {"pearson": float(pearsonr(pred, gold).statistic), "spearman": float(spearmanr(pred, gold).statistic),
            "pairs": len(gold)}
