"""A similarity task's pair scores blended with what its other pairs say (task key ``blend``): a linear
fit (scikit-learn least squares) on the dev part, applied to the scored test part. A cross-encoder or an
ensemble scores each pair alone; the blend adds the mean score of the pair's group (the other targets of
its anchor in its context: a pair that is high for an anchor whose targets all score high is less
special) and an exact-match flag (an anchor scored against itself is a full match)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from patentgpt.embed.taskdef import BlendSpec


def features(spec: BlendSpec, rows: list[dict], pred: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(names, matrix): the pair's score, the mean score of its ``group_by`` group, its ``same`` flag."""
    pred = np.asarray(pred, dtype=np.float64)
    names, cols = ["score"], [pred]
    if spec.group_by:
        members = defaultdict(list)
        for i, r in enumerate(rows):
            members[r["group"]].append(i)
        mean = np.empty_like(pred)
        for idx in members.values():
            mean[idx] = pred[idx].mean()
        names.append(f"group mean ({'+'.join(spec.group_by)})")
        cols.append(mean)
    if spec.same:
        names.append(f"same {spec.same[0]} and {spec.same[1]}")
        cols.append(np.array([float(r["same"]) for r in rows]))
    return names, np.stack(cols, axis=1)


def fit_blend(spec: BlendSpec, dev_rows: list[dict], dev_pred: np.ndarray, test_rows: list[dict],
              test_pred: np.ndarray) -> tuple[np.ndarray, dict]:
    """The blended test scores, and what was fitted (features, coefficients, dev Pearson before and after)."""
    from sklearn.linear_model import LinearRegression

    from patentgpt.embed import metrics

    names, x_dev = features(spec, dev_rows, dev_pred)
    gold = np.array([r["score"] for r in dev_rows])
    model = LinearRegression().fit(x_dev, gold)
    _, x_test = features(spec, test_rows, test_pred)
    info = {"features": names, "coef": [round(float(c), 6) for c in model.coef_],
            "intercept": round(float(model.intercept_), 6), "dev_pairs": len(dev_rows),
            "dev_pearson_before": metrics.pair_scores(dev_pred, gold)["pearson"],
            "dev_pearson_fitted": metrics.pair_scores(model.predict(x_dev), gold)["pearson"]}
    return model.predict(x_test), info
