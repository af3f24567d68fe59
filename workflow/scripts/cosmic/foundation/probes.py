"""Evaluation of representations by held-out linear probes (:func:`linear_probe`,
:func:`evaluate_representations`)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


# Inverse regularisation strengths a linear probe chooses from (by inner cross-validation on its
# training split): a fixed C favours low-dimensional representations (34 region properties vs a
# 256-value embedding), so every representation gets its own, chosen without the test nuclei.
PROBE_CS = (0.001, 0.01, 0.1, 1.0)


def linear_probe(X, y, seed: int = 0, test_fraction: float = 0.3, Cs: Sequence[float] = PROBE_CS) -> dict:
    """Held-out accuracy of a linear classifier of ``y`` from ``X``.

    Rows with missing labels are dropped, classes with fewer than 2 members too; features are
    standardised (fit on the training split), a multinomial logistic regression is fit on a
    stratified ``1 - test_fraction`` split and scored on the rest. Its inverse regularisation
    ``C`` is chosen from ``Cs`` by 3-fold stratified cross-validation inside the training split
    (reported as ``C``). Never reports training accuracy. ``chance`` is the held-out
    majority-class accuracy.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=object)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"linear_probe: X {X.shape} and y {y.shape} do not match")
    ok = np.array([v is not None and not (isinstance(v, float) and math.isnan(v)) for v in y], dtype=bool)
    X, y = X[ok], y[ok].astype(str)
    X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
    cls, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, cls[counts >= 2])
    X, y = X[keep], y[keep]
    cls = np.unique(y)
    nan = float("nan")
    if len(cls) < 2 or len(y) < 4:
        return {"accuracy": nan, "balanced_accuracy": nan, "chance": nan, "n_train": 0, "n_test": 0,
                "n_classes": int(len(cls))}
    n_test = max(len(cls), int(round(len(y) * test_fraction)))
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=n_test, stratify=y, random_state=seed)
    Cs = [float(c) for c in Cs]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=Cs[0]))
    _, tr_counts = np.unique(ytr, return_counts=True)
    folds = int(min(3, tr_counts.min()))
    if len(Cs) > 1 and folds >= 2:
        clf = GridSearchCV(clf, {"logisticregression__C": Cs}, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    clf.fit(Xtr, ytr)
    pred = clf.predict(Xte)
    C = clf.best_params_["logisticregression__C"] if hasattr(clf, "best_params_") else Cs[0]
    _, te_counts = np.unique(yte, return_counts=True)
    return {"accuracy": float(accuracy_score(yte, pred)), "C": float(C),
            "balanced_accuracy": float(balanced_accuracy_score(yte, pred)),
            "chance": float(te_counts.max() / te_counts.sum()),
            "n_train": int(len(ytr)), "n_test": int(len(yte)), "n_classes": int(len(cls))}


def evaluate_representations(representations: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                             seed: int = 0, test_fraction: float = 0.3, n_splits: int = 1):
    """Linear-probe table: one row per representation x target. Every representation is scored
    on the same ``n_splits`` random splits per target (split seeds ``seed``, ``seed + 1``, ...);
    ``accuracy``, ``balanced_accuracy`` and ``chance`` are means over the splits, ``accuracy_sd``
    their SD, ``C`` the regularisation chosen most often."""
    import pandas as pd

    rows = []
    for rname, X in representations.items():
        for tname, y in labels.items():
            runs = pd.DataFrame([linear_probe(X, y, seed=seed + k, test_fraction=test_fraction)
                                 for k in range(int(n_splits))])
            row = {"representation": rname, "target": tname, "dim": int(np.asarray(X).shape[1])}
            for c in ("accuracy", "balanced_accuracy", "chance"):
                row[c] = float(runs[c].mean())
            row["accuracy_sd"] = float(runs["accuracy"].std(ddof=1)) if len(runs) > 1 else float("nan")
            row["n_splits"] = int(n_splits)
            row["C"] = float(runs["C"].mode().iloc[0]) if "C" in runs else float("nan")
            for c in ("n_train", "n_test", "n_classes"):
                row[c] = int(runs[c].iloc[0])
            rows.append(row)
    return pd.DataFrame(rows)
