"""Cross-validated classifiers predicting a comparison's group from each representation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .comparisons import Comparison
from .params import DrugResponseParams

FEATURE_SETS = ("rna", "morphology", "foundation", "rna+morphology")
FEATURE_SET_OBSM = {"rna": ("X_rna",), "morphology": ("X_morph",), "foundation": ("X_fm",),
                    "rna+morphology": ("X_rna", "X_morph")}


def cross_validated_classifier(X: np.ndarray, y: np.ndarray, params: DrugResponseParams) -> dict:
    """Held-out ROC AUC and balanced accuracy of a standardised logistic regression.

    Median imputation, standardisation and the class-balanced logistic regression are fitted on
    the training folds only (one scikit-learn pipeline); every cell is predicted once, by the
    model of the fold that held it out.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64).copy()
    X[~np.isfinite(X)] = np.nan
    y = np.asarray(y, dtype=bool)
    folds = int(min(params.cv_folds, y.sum(), (~y).sum()))
    if folds < 2:
        return dict(auc=np.nan, balanced_accuracy=np.nan, n_folds=folds, note="fewer than 2 cells in a class")
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegression(max_iter=5000, class_weight="balanced"))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=params.seed)
    proba = cross_val_predict(model, X, y, cv=cv, method="predict_proba")[:, 1]
    return dict(auc=float(roc_auc_score(y, proba)), balanced_accuracy=float(balanced_accuracy_score(y, proba >= 0.5)),
                n_folds=folds, note="")


CLASSIFIER_COLUMNS = ["comparison", "features", "obsm", "n_features", "n_group", "n_reference", "n_folds", "auc",
                      "balanced_accuracy", "note"]


def classifiers(adata, comps: Mapping[str, Comparison], params: DrugResponseParams) -> pd.DataFrame:
    """One row per comparison and feature set (rows of skipped ones carry the reason in ``note``)."""
    rows = []
    for comp in comps.values():
        for fs in FEATURE_SETS:
            keys = FEATURE_SET_OBSM[fs]
            row = dict(comparison=comp.name, features=fs, obsm="+".join(keys), n_group=comp.n_group,
                       n_reference=comp.n_reference)
            missing = [k for k in keys if k not in adata.obsm]
            if comp.skipped:
                row["note"] = f"comparison skipped: {comp.skipped}"
            elif missing:
                row["note"] = f"obsm {missing} not in the cohort"
            else:
                X = np.hstack([np.asarray(adata.obsm[k], dtype=np.float64)[comp.cells] for k in keys])
                row["n_features"] = X.shape[1]
                row.update(cross_validated_classifier(X, comp.is_group, params))
            rows.append(row)
    return pd.DataFrame(rows, columns=CLASSIFIER_COLUMNS)
