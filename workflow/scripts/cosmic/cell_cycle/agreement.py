"""Agreement of phase calls (accuracy, kappa, confusion) and of the RNA position with a measured angle."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import CosmicInputError
from .circular import circular_scores
from .params import PHASES, TWO_PI


def phase_agreement(reference, predicted, labels: Sequence[str] = PHASES) -> dict:
    """Accuracy, balanced accuracy, Cohen's kappa and the confusion matrix (rows: reference)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix

    r = pd.Series(reference, dtype=object).to_numpy()
    p = pd.Series(predicted, dtype=object).to_numpy()
    ok = pd.notna(r) & pd.notna(p)
    r, p = r[ok].astype(str), p[ok].astype(str)
    labels = list(labels)
    out = {"n": int(ok.sum()), "labels": labels}
    if not len(r):
        return out | {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "kappa": float("nan"),
                      "confusion": [[0] * len(labels) for _ in labels]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bal = balanced_accuracy_score(r, p)
        kappa = cohen_kappa_score(r, p, labels=labels)
    return out | {"accuracy": float(accuracy_score(r, p)), "balanced_accuracy": float(bal),
                  "kappa": float(kappa), "confusion": confusion_matrix(r, p, labels=labels).tolist()}


def reference_angle_agreement(obs: pd.DataFrame, key: str, cells: pd.DataFrame, where: str) -> dict:
    """RNA position against an independently measured cycle angle (e.g. FUCCI theta) in ``obs[key]``;
    adds the angle to ``cells`` as ``reference_<key>``."""
    if key not in obs:
        raise CosmicInputError(f"{where}: cell_cycle.reference_angle_key '{key}' is not an obs column; "
                               f"obs has {list(obs.columns)[:25]}.")
    angle = pd.to_numeric(obs[key], errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(angle)
    if ok.sum() < 10:
        raise CosmicInputError(f"{where}: obs['{key}'] has {int(ok.sum())} numeric angles; need at least 10.")
    angle = np.mod(angle, TWO_PI)
    position = cells["cycle_position"].to_numpy(np.float64)
    cells[f"reference_{key}"] = np.where(ok, angle, np.nan)
    return {"key": key, "n": int(ok.sum()), **circular_scores(position[ok], angle[ok])}
