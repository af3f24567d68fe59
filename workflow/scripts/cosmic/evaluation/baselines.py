"""The cheap baselines a reviewer tries first, fitted on training cells only.

Point predictors (conditional means) share the signature
``f(x_train, y_train, x_val, y_val, x_test, seed=0) -> y_pred_test`` and return a float64
``(n_test, d)`` array (a 1-D ``y`` is treated as one column):

* ``mean`` -- the training mean;
* ``ridge`` -- linear ridge on standardised inputs, alpha chosen by efficient leave-one-out CV on
  the training cells (:class:`~sklearn.linear_model.RidgeCV`, one alpha for all outputs);
* ``spline_ridge`` -- additive cubic splines (5 knots per input) + the same ridge. With more than
  :data:`SPLINE_MAX_DIMS` input columns (e.g. a 256-d embedding) the standardised inputs are first
  reduced to their leading :data:`SPLINE_MAX_DIMS` principal components, fitted on training cells,
  so the spline basis stays small (``32 x 7`` columns);
* ``knn`` -- k-nearest-neighbour mean on standardised inputs, ``k`` chosen on the validation cells
  from :data:`KNN_GRID` by variance-weighted total R² (``k = 15`` without validation cells).

Validation cells are read only to choose ``k``; test cells enter no fit (every transform is fitted
on training cells and each test row is predicted on its own). All predictors are deterministic;
``seed`` is accepted so every entry of :data:`PREDICTORS` is called the same way.

Generators return samples of shape ``(n_samples, n_test, d)`` that keep the joint structure of
real cells (whole output vectors are reused, never per-column draws):

* ``ridge_residual`` -- the ridge conditional mean plus the leave-one-out residual vector of a
  random training cell (drawn independently per test cell and sample);
* ``nearest_rna`` -- retrieval: sample ``j`` is the training cell whose input is the ``(j+1)``-th
  nearest to the test cell's (:func:`nearest_rna_samples` also returns the training indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import SplineTransformer, StandardScaler

RIDGE_ALPHAS = np.logspace(-2, 4, 13)
KNN_GRID = (5, 10, 15, 30, 50)
KNN_DEFAULT = 15
SPLINE_MAX_DIMS = 32
SPLINE_KNOTS = 5
SPLINE_DEGREE = 3


# ---------------------------------------------------------------------------------------
# input checks
def _matrix(name: str, a) -> np.ndarray:
    """``a`` as a finite float64 2-D array (1-D -> one column); ValueError naming ``name``."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(a).sum())} entries); "
                         "impute or drop those cells before fitting a baseline")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains infinite values")
    return a


def _train(x_train, y_train, x_test=None):
    """Checked training inputs/targets and test inputs (``None`` when ``x_test`` is)."""
    xtr, ytr = _matrix("x_train", x_train), _matrix("y_train", y_train)
    if len(xtr) != len(ytr):
        raise ValueError(f"x_train has {len(xtr)} rows but y_train has {len(ytr)}")
    if len(xtr) < 2:
        raise ValueError(f"need at least 2 training cells, got {len(xtr)}")
    if x_test is None:
        return xtr, ytr, None
    xte = _matrix("x_test", x_test)
    if xte.shape[1] != xtr.shape[1]:
        raise ValueError(f"x_test has {xte.shape[1]} columns but x_train has {xtr.shape[1]}")
    return xtr, ytr, xte


def _validation(x_val, y_val, n_inputs: int, n_outputs: int):
    """Checked validation cells, or ``(None, None)`` when there are none."""
    if x_val is None or y_val is None or len(x_val) == 0:
        return None, None
    xva, yva = _matrix("x_val", x_val), _matrix("y_val", y_val)
    if len(xva) != len(yva):
        raise ValueError(f"x_val has {len(xva)} rows but y_val has {len(yva)}")
    if xva.shape[1] != n_inputs:
        raise ValueError(f"x_val has {xva.shape[1]} columns but x_train has {n_inputs}")
    if yva.shape[1] != n_outputs:
        raise ValueError(f"y_val has {yva.shape[1]} columns but y_train has {n_outputs}")
    return xva, yva


def _inputs(x_train, y_train, x_val, y_val, x_test):
    """All five checked; validation cells are ``(None, None)`` when absent."""
    xtr, ytr, xte = _train(x_train, y_train, x_test)
    return (xtr, ytr, *_validation(x_val, y_val, xtr.shape[1], ytr.shape[1]), xte)


# ---------------------------------------------------------------------------------------
# point predictors
def _fit_ridge(x, y):
    """Standardiser + RidgeCV (efficient LOO, one alpha for all outputs) fitted on ``(x, y)``."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=False)).fit(x, y)


def _fit_spline_ridge(x, y):
    """Standardiser [+ PCA to SPLINE_MAX_DIMS] + cubic B-splines + RidgeCV, fitted on ``(x, y)``."""
    steps = [StandardScaler()]
    if x.shape[1] > SPLINE_MAX_DIMS:
        n_comp = min(SPLINE_MAX_DIMS, len(x))
        steps += [PCA(n_components=n_comp, svd_solver="full"), StandardScaler()]
    steps += [SplineTransformer(n_knots=SPLINE_KNOTS, degree=SPLINE_DEGREE),
              RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=False)]
    return make_pipeline(*steps).fit(x, y)


def _predict(model, x, n_outputs: int) -> np.ndarray:
    """``model.predict(x)`` as an ``(n, n_outputs)`` array (sklearn drops a single output column)."""
    if not len(x):
        return np.zeros((0, n_outputs))
    return np.asarray(model.predict(x), dtype=np.float64).reshape(len(x), n_outputs)


def mean(x_train, y_train, x_val, y_val, x_test, seed: int = 0) -> np.ndarray:
    """Training-mean baseline: every test cell gets the mean of the training cells only."""
    _, ytr, _, _, xte = _inputs(x_train, y_train, x_val, y_val, x_test)
    return np.repeat(ytr.mean(0, keepdims=True), len(xte), axis=0)


def ridge(x_train, y_train, x_val, y_val, x_test, seed: int = 0) -> np.ndarray:
    """Linear ridge on standardised inputs, alpha by leave-one-out CV on training cells only."""
    xtr, ytr, _, _, xte = _inputs(x_train, y_train, x_val, y_val, x_test)
    return _predict(_fit_ridge(xtr, ytr), xte, ytr.shape[1])


def spline_ridge(x_train, y_train, x_val, y_val, x_test, seed: int = 0) -> np.ndarray:
    """Additive cubic-spline ridge (inputs > 32-d first PCA-reduced), fitted on training cells only."""
    xtr, ytr, _, _, xte = _inputs(x_train, y_train, x_val, y_val, x_test)
    return _predict(_fit_spline_ridge(xtr, ytr), xte, ytr.shape[1])


def _neighbour_mean(y: np.ndarray, idx: np.ndarray, ks=None):
    """Mean of ``y`` over the first ``k`` neighbours in ``idx`` (rows: query cells).

    Accumulates one neighbour column at a time (memory ``n_query x d``, not ``x k``); with ``ks``
    returns ``{k: mean}`` for each ``k`` in ``ks``, else the mean over all columns of ``idx``.
    """
    want = set(ks) if ks is not None else {idx.shape[1]}
    total = np.zeros((idx.shape[0], y.shape[1]))
    out = {}
    for j in range(idx.shape[1]):
        total += y[idx[:, j]]
        if j + 1 in want:
            out[j + 1] = total / (j + 1)
    return out if ks is not None else out[idx.shape[1]]


@dataclass(frozen=True)
class KnnChoice:
    """The chosen ``k`` and the validation total R² of each candidate (empty without validation)."""

    k: int
    val_r2: dict


def _knn_model(xtr):
    """Standardiser fitted on training inputs and a neighbour index on the standardised cells."""
    scaler = StandardScaler().fit(xtr)
    return scaler, NearestNeighbors().fit(scaler.transform(xtr))


def _choose_k(scaler, index, ytr, xva, yva) -> KnnChoice:
    """``k`` from :data:`KNN_GRID` (capped at n_train) maximising validation total R²."""
    n_train = len(ytr)
    if xva is None:
        return KnnChoice(k=min(KNN_DEFAULT, n_train), val_r2={})
    ks = sorted({min(k, n_train) for k in KNN_GRID})
    idx = index.kneighbors(scaler.transform(xva), n_neighbors=ks[-1], return_distance=False)
    preds = _neighbour_mean(ytr, idx, ks)
    sse = {k: float(((yva - p) ** 2).sum()) for k, p in preds.items()}
    sst = float(((yva - yva.mean(0)) ** 2).sum())
    r2 = {k: (1.0 - s / sst) if sst > 0 else float("nan") for k, s in sse.items()}
    best = min(ks, key=lambda k: (sse[k], k))  # max total R² = min ΣSSE (ΣSST is fixed); ties: smaller k
    return KnnChoice(k=int(best), val_r2=r2)


def knn_choice(x_train, y_train, x_val, y_val) -> KnnChoice:
    """The kNN baseline's ``k``, chosen on validation cells for neighbours among training cells only."""
    xtr, ytr, _ = _train(x_train, y_train)
    xva, yva = _validation(x_val, y_val, xtr.shape[1], ytr.shape[1])
    scaler, index = _knn_model(xtr)
    return _choose_k(scaler, index, ytr, xva, yva)


def knn(x_train, y_train, x_val, y_val, x_test, seed: int = 0, return_k: bool = False):
    """kNN mean over training cells only (standardised inputs), k chosen on validation cells.

    Returns the ``(n_test, d)`` prediction, or ``(prediction, k)`` when ``return_k``.
    """
    xtr, ytr, xva, yva, xte = _inputs(x_train, y_train, x_val, y_val, x_test)
    scaler, index = _knn_model(xtr)
    k = _choose_k(scaler, index, ytr, xva, yva).k
    if len(xte):
        idx = index.kneighbors(scaler.transform(xte), n_neighbors=k, return_distance=False)
        pred = _neighbour_mean(ytr, idx)
    else:
        pred = np.zeros((0, ytr.shape[1]))
    return (pred, k) if return_k else pred


PREDICTORS = {"mean": mean, "ridge": ridge, "spline_ridge": spline_ridge, "knn": knn}


def predict_all(x_train, y_train, x_val, y_val, x_test, seed: int = 0, return_k: bool = False):
    """Test-cell predictions of every baseline in :data:`PREDICTORS`, each fitted on training cells only.

    Returns ``{name: (n_test, d) array}``, or ``(that dict, knn's k)`` when ``return_k``.
    """
    preds = {}
    k = None
    for name, fn in PREDICTORS.items():
        if fn is knn:
            preds[name], k = knn(x_train, y_train, x_val, y_val, x_test, seed=seed, return_k=True)
        else:
            preds[name] = fn(x_train, y_train, x_val, y_val, x_test, seed=seed)
    return (preds, k) if return_k else preds


# ---------------------------------------------------------------------------------------
# generators
def _loo_residuals(model, x, y) -> np.ndarray:
    """Leave-one-out residuals ``e_i / (1 - h_ii)`` of the fitted ridge pipeline at its chosen alpha."""
    xs = model[0].transform(x)  # standardised on these (training) cells, so already centred
    alpha = float(model[-1].alpha_)
    gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
    h = np.einsum("ij,ji->i", xs, np.linalg.solve(gram, xs.T)) + 1.0 / len(xs)  # + intercept
    resid = y - _predict(model, x, y.shape[1])
    return resid / np.maximum(1.0 - h, 1e-6)[:, None]


def ridge_residual_samples(x_train, y_train, x_test, n_samples: int, seed: int = 0) -> np.ndarray:
    """Ridge mean plus whole leave-one-out residual vectors of random training cells (training only).

    Residual cells are drawn with replacement, independently per sample and test cell, from
    ``np.random.default_rng(seed)``; returns ``(n_samples, n_test, d)``. Leave-one-out residuals
    (``e_i / (1 - h_ii)``, exact for the chosen alpha) keep the spread of errors on unseen cells.
    """
    xtr, ytr, xte = _train(x_train, y_train, x_test)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    model = _fit_ridge(xtr, ytr)
    resid = _loo_residuals(model, xtr, ytr)
    centre = _predict(model, xte, ytr.shape[1])
    # drawn cell-major, so appending test cells leaves the earlier cells' samples unchanged
    draw = np.random.default_rng(seed).integers(0, len(xtr), size=(len(xte), int(n_samples))).T
    return centre[None] + resid[draw]


class Retrieved(NamedTuple):
    """Retrieved training cells: ``samples`` (n_samples, n_test, d), ``indices`` (n_samples, n_test)."""

    samples: np.ndarray
    indices: np.ndarray


def nearest_rna_samples(x_train, y_train, x_test, n_samples: int, seed: int = 0) -> Retrieved:
    """Retrieval from training cells only: sample j is the cell with the (j+1)-th nearest standardised input.

    Deterministic (``seed`` is unused, accepted for the common generator signature); ``indices``
    are rows of ``x_train`` / ``y_train``, so a caller can fetch the retrieved cells' images.
    """
    xtr, ytr, xte = _train(x_train, y_train, x_test)
    n = int(n_samples)
    if not 1 <= n <= len(xtr):
        raise ValueError(f"n_samples must be between 1 and the {len(xtr)} training cells, got {n_samples}")
    if not len(xte):
        return Retrieved(np.zeros((n, 0, ytr.shape[1])), np.zeros((n, 0), dtype=np.int64))
    scaler, index = _knn_model(xtr)
    idx = index.kneighbors(scaler.transform(xte), n_neighbors=n, return_distance=False).T
    return Retrieved(ytr[idx], idx.astype(np.int64))


def _nearest_rna(x_train, y_train, x_test, n_samples: int, seed: int = 0) -> np.ndarray:
    """Samples only of :func:`nearest_rna_samples`, for the common generator signature."""
    return nearest_rna_samples(x_train, y_train, x_test, n_samples, seed).samples


# Common signature: f(x_train, y_train, x_test, n_samples, seed=0) -> (n_samples, n_test, d) samples.
GENERATORS = {"ridge_residual": ridge_residual_samples, "nearest_rna": _nearest_rna}
