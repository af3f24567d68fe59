"""Held-out evaluation metrics and baselines for cross-modal prediction.

Conventions: ``y`` and predictions are ``cells x features`` arrays of the *test* cells; R² uses
the test-set mean (``1 - SSE / SS_tot``), so a predictor no better than the test mean scores
<= 0. Baselines are fitted on training cells only and evaluated on the same test cells.
Two-sample metrics (sliced Wasserstein, k-NN accuracy, coverage, classifier accuracy) compare a
set of real cells with a set of generated ones, row order ignored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.preprocessing import StandardScaler

RIDGE_ALPHAS = np.logspace(-2, 5, 15)


def _2d(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


# ---------------------------------------------------------------------------------------
# per-feature and total scores
def sse_sstot(y, pred) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature sum of squared errors and total sum of squares about the test mean."""
    y, pred = _2d(y), _2d(pred)
    sse = ((y - pred) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    return sse, sst


def r2_per_feature(y, pred) -> np.ndarray:
    """Per-feature R² = 1 - SSE/SS_tot (test-set mean); NaN where the feature is constant."""
    sse, sst = sse_sstot(y, pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def pearson_per_feature(y, pred, constant_prediction: float = np.nan) -> np.ndarray:
    """Per-feature Pearson correlation; NaN where ``y`` is constant.

    Where the prediction is constant (and ``y`` is not) the correlation is undefined; it is
    ``constant_prediction`` there: NaN by default, 0 to score "no information" (a predictor that
    cannot tell the cells apart).
    """
    return masked_pearson_per_feature(y, pred, None, min_cells=2, constant_prediction=constant_prediction)


def masked_pearson_per_feature(y, pred, mask=None, min_cells: int = 5,
                               constant_prediction: float = 0.0) -> np.ndarray:
    """Per-feature Pearson correlation over the cells where ``mask`` is True (per feature).

    ``mask`` is a ``cells x features`` boolean array (e.g. gene detected, count > 0) or None (all
    cells). NaN where fewer than ``min_cells`` cells are selected or ``y`` is constant on them;
    ``constant_prediction`` where the prediction is constant on them. Constancy is judged relative
    to the second moment (float rounding of a repeated value counts as constant).
    """
    y, pred = np.asarray(y), np.asarray(pred)
    if y.ndim == 2 and y.shape[0] * y.shape[1] > 2 ** 22:  # features are independent: a block at a time
        step = max(1, 2 ** 22 // max(1, y.shape[0]))
        return np.concatenate([
            masked_pearson_per_feature(y[:, i:i + step], pred[:, i:i + step],
                                       None if mask is None else np.asarray(mask)[:, i:i + step], min_cells,
                                       constant_prediction) for i in range(0, y.shape[1], step)])
    y, pred = _2d(y), _2d(pred)
    w = np.ones_like(y) if mask is None else _2d(np.asarray(mask, dtype=bool))
    n = w.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        nn = np.where(n > 0, n, 1.0)
        yc = (y - (w * y).sum(0) / nn) * w
        pc = (pred - (w * pred).sum(0) / nn) * w
        syy, spp, syp = (yc ** 2).sum(0), (pc ** 2).sum(0), (yc * pc).sum(0)
        y_const = syy <= 1e-20 * (w * y ** 2).sum(0)
        p_const = spp <= 1e-20 * (w * pred ** 2).sum(0)
        r = syp / np.sqrt(np.where(y_const | p_const, 1.0, syy * spp))
    r = np.where(p_const, constant_prediction, np.clip(r, -1.0, 1.0))
    return np.where((n < max(2, min_cells)) | y_const, np.nan, r)


def total_r2(y, pred) -> float:
    """Variance-weighted total R² = 1 - ΣSSE / ΣSS_tot over all features."""
    sse, sst = sse_sstot(y, pred)
    return float(1.0 - sse.sum() / sst.sum()) if sst.sum() > 0 else float("nan")


def mean_r2(y, pred) -> float:
    """Unweighted mean of per-feature R² (the total for standardised features)."""
    r2 = r2_per_feature(y, pred)
    return float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")


def bootstrap_ci(y, pred, statistic=total_r2, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """Point estimate and basic bootstrap interval of ``statistic(y, pred)`` over test cells.

    Cells are resampled with replacement (the same rows of ``y`` and ``pred``); returns
    ``{"value", "ci_low", "ci_high", "n_boot"}``.
    """
    y, pred = _2d(y), _2d(pred)
    value = statistic(y, pred)
    if n_boot <= 0 or len(y) < 2:
        return {"value": value, "ci_low": float("nan"), "ci_high": float("nan"), "n_boot": 0}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(y), len(y)) for _ in range(n_boot)]
    if statistic in (total_r2, mean_r2):
        stats = _resampled_r2(y, pred, draws, weighted=statistic is total_r2)
    else:
        stats = np.array([statistic(y[i], pred[i]) for i in draws])
    a = (1 - level) / 2
    q_lo, q_hi = np.nanquantile(stats, [a, 1 - a])
    # basic (reverse-percentile) interval: corrects the small downward bias of resampled R²
    # (duplicated cells shrink SS_tot), so the interval stays centred on the estimate
    lo, hi = 2 * value - q_hi, 2 * value - q_lo
    return {"value": value, "ci_low": float(lo), "ci_high": float(hi), "n_boot": int(n_boot)}


def _resampled_r2(y, pred, draws, weighted: bool, block_values: int = 2 ** 22) -> np.ndarray:
    """:func:`total_r2` (``weighted``) or :func:`mean_r2` of each resample of the cells, from per-cell sums
    weighted by how often each cell was drawn, a block of features at a time: no resampled copy of
    ``y`` is made (the same values as indexing, up to summation order)."""
    n, width = y.shape
    weights = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)  # draws x cells
    sse, sst = np.zeros((len(weights), width)), np.zeros((len(weights), width))
    step = max(1, block_values // max(1, n))
    for start in range(0, width, step):
        cols = slice(start, start + step)
        yb, pb = y[:, cols], pred[:, cols]
        squares, total = weights @ (yb ** 2), weights @ yb
        sse[:, cols] = weights @ ((yb - pb) ** 2)
        spread = squares - total ** 2 / n
        sst[:, cols] = np.where(spread > 1e-10 * squares, spread, 0.0)  # a constant feature: rounding only
    if weighted:
        totals = sst.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(totals > 0, 1.0 - sse.sum(1) / np.where(totals > 0, totals, 1.0), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
    return np.array([float(np.nanmean(r)) if np.isfinite(r).any() else np.nan for r in r2])


# ---------------------------------------------------------------------------------------
# cross-modal matching
def _sq_dist(a, b) -> np.ndarray:
    a, b = _2d(a), _2d(b)
    d = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


MAX_BLOCK_ENTRIES = 2 ** 24  # distances held at once by the matching metrics (~128 MB of float64)


def _rank_of_partner(d: np.ndarray, rows: np.ndarray, axis: int) -> np.ndarray:
    """Rank of each true partner within a block of the distance matrix (0 = closest; ties count half).

    ``d`` holds whole rows (``axis=1``) or whole columns (``axis=0``) of the cells in ``rows``."""
    local = np.arange(len(rows))
    partner = d[local, rows][:, None] if axis == 1 else d[rows, local][None, :]
    return (d < partner).sum(axis) + 0.5 * ((d == partner).sum(axis) - 1)


def partner_ranks(x, y, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every cell i (row i of ``x`` and of ``y`` are the same cell): the rank of y[i] among all y
    by distance to x[i], and the rank of x[i] among all x by distance to y[i].

    Computed in blocks of rows and columns, so memory is O(block x n) instead of O(n^2)
    (``block`` defaults to :data:`MAX_BLOCK_ENTRIES` / n); the values equal the dense computation.
    """
    x, y = _2d(x), _2d(y)
    n = len(x)
    block = int(block or max(1, MAX_BLOCK_ENTRIES // max(n, 1)))
    by_row, by_column = np.empty(n), np.empty(n)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        by_row[rows] = _rank_of_partner(_sq_dist(x[rows], y), rows, axis=1)
        by_column[rows] = _rank_of_partner(_sq_dist(x, y[rows]), rows, axis=0)
    return by_row, by_column


def foscttm(x, y, block: int | None = None) -> float:
    """Fraction Of Samples Closer Than the True Match, averaged over both directions.

    Row i of ``x`` and row i of ``y`` are the same cell (e.g. generated vs observed
    representations). 0 = every cell is closest to its partner; ~0.5 = random. Ties count half,
    so a constant prediction scores 0.5. Memory stays O(block x n) (:func:`partner_ranks`).
    """
    n = len(_2d(x))
    if n < 2:
        return float("nan")
    by_row, by_column = partner_ranks(x, y, block)
    return float((by_row.mean() + by_column.mean()) / 2 / (n - 1))


def topk_retrieval(query, reference, k: int = 1, block: int | None = None) -> float:
    """Fraction of queries whose true partner (same row) is among the ``k`` nearest references."""
    by_row, _ = partner_ranks(query, reference, block)
    return float((by_row < k).mean())


# ---------------------------------------------------------------------------------------
# calibration
def interval_coverage(y, samples, level: float = 0.9) -> dict:
    """Coverage of central predictive intervals built from samples.

    ``samples`` is ``n_samples x cells x features``; the interval per cell and feature spans the
    (1-level)/2 and (1+level)/2 sample quantiles. Returns overall and per-feature coverage.
    """
    y = _2d(y)
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim == 2:
        s = s[:, :, None]
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], axis=0)
    inside = (y >= lo) & (y <= hi)
    return {"level": level, "coverage": float(inside.mean()), "per_feature": inside.mean(0)}


# ---------------------------------------------------------------------------------------
# baselines (fit on training cells only)
def mean_baseline(y_train, n_test: int) -> np.ndarray:
    """Predict the training mean for every test cell (``y_train`` dense or sparse): a read-only view
    repeating one row, so it takes no memory per cell."""
    if sp.issparse(y_train):
        mean = np.asarray(y_train.mean(0, dtype=np.float64)).reshape(1, -1)
    else:
        mean = _2d(y_train).mean(0, keepdims=True)
    return np.broadcast_to(mean, (n_test, mean.shape[1]))


def ridge_baseline(x_train, y_train, x_test, alphas=RIDGE_ALPHAS) -> np.ndarray:
    """RidgeCV (alpha chosen by efficient leave-one-out on training cells) on standardised inputs.

    A sparse ``y_train`` (cells x genes) is never made dense: :func:`sparse_target_ridge` gives the same
    alpha and predictions from products with the sparse matrix."""
    sc = StandardScaler().fit(x_train)
    if sp.issparse(y_train):
        return sparse_target_ridge(sc.transform(x_train), y_train, sc.transform(x_test), alphas)
    model = RidgeCV(alphas=alphas).fit(sc.transform(x_train), _2d(y_train))
    return model.predict(sc.transform(x_test))


def sparse_target_ridge(x_train, y_train, x_test, alphas=RIDGE_ALPHAS) -> np.ndarray:
    """Ridge regression with intercept of a sparse multi-output ``y_train`` on a few dense inputs, alpha
    chosen as scikit-learn's ``RidgeCV`` does (the smallest mean squared leave-one-out error over every
    cell and output, closed form), in O(stored values x inputs) time and O(cells x inputs) memory.

    With the centred inputs ``X = U S V'``, shrinkage ``D = S² / (S² + alpha)`` and ``Z = U' Y``, the fit is
    ``mean(Y) + U D Z``, the leverage ``h = 1/n + sum(U² D)``, and a cell's leave-one-out error
    ``|y - fit|² / (1 - h)²``, whose squared norm expands into products of ``Y`` with ``Z`` only.
    """
    x = np.asarray(x_train, dtype=np.float64)
    y = sp.csr_matrix(y_train)
    n = len(x)
    x_mean = x.mean(0)
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    keep = s > s.max() * 1e-10 if len(s) and s.max() > 0 else np.zeros(len(s), bool)
    u, s, vt = u[:, keep], s[keep], vt[keep]
    # every product with Y a chunk of cells at a time, in float64 (memory: one chunk, not a copy of Y)
    size = max(1, int(2 ** 22 // max(1.0, y.nnz / max(1, n))))
    chunks = [slice(a, min(n, a + size)) for a in range(0, n, size)]
    y_sum, z = np.zeros(y.shape[1]), np.zeros((u.shape[1], y.shape[1]))
    y_sq = np.zeros(n)
    for rows in chunks:
        block = y[rows].astype(np.float64)
        y_sum += np.asarray(block.sum(0)).ravel()
        z += np.asarray(block.T @ u[rows]).T  # U' Y (U is orthogonal to the constant, so equal to U' (Y - mean))
        y_sq[rows] = np.asarray(block.multiply(block).sum(1)).ravel()
    y_mean = y_sum / n
    y_dot_mean, y_dot_z = np.zeros(n), np.zeros((n, u.shape[1]))
    for rows in chunks:
        block = y[rows].astype(np.float64)
        y_dot_mean[rows] = block @ y_mean
        y_dot_z[rows] = np.asarray(block @ z.T)
    z_mean, gram = z @ y_mean, z @ z.T
    best = None
    for alpha in alphas:
        shrink = s ** 2 / (s ** 2 + alpha)
        ud = u * shrink
        fit_sq = y_mean @ y_mean + 2 * ud @ z_mean + np.einsum("ij,jk,ik->i", ud, gram, ud)
        residual_sq = y_sq - 2 * (y_dot_mean + (ud * y_dot_z).sum(1)) + fit_sq
        leverage = 1.0 / n + (u * ud).sum(1)
        error = float(np.mean(np.clip(residual_sq, 0, None) / (1 - leverage) ** 2))
        if best is None or error < best[0]:
            best = (error, alpha)
    alpha = best[1]
    coef = vt.T @ ((s / (s ** 2 + alpha))[:, None] * z)  # inputs x outputs
    return y_mean[None, :] + (np.asarray(x_test, dtype=np.float64) - x_mean) @ coef


def knn_baseline(x_train, y_train, x_test, k: int = 15) -> np.ndarray:
    """k-nearest-neighbours regression (uniform average of the k closest training cells); a sparse
    ``y_train`` is averaged through a sparse neighbour matrix, never made dense."""
    sc = StandardScaler().fit(x_train)
    k = max(1, min(int(k), len(x_train)))
    if sp.issparse(y_train):
        from sklearn.neighbors import NearestNeighbors

        idx = NearestNeighbors(n_neighbors=k).fit(sc.transform(x_train)).kneighbors(
            sc.transform(x_test), return_distance=False)
        weights = sp.csr_matrix((np.full(idx.size, 1.0 / k), (np.repeat(np.arange(len(idx)), k), idx.ravel())),
                                shape=(len(idx), y_train.shape[0]))
        return (weights @ sp.csr_matrix(y_train, dtype=np.float64)).toarray()
    model = KNeighborsRegressor(n_neighbors=k).fit(sc.transform(x_train), _2d(y_train))
    return model.predict(sc.transform(x_test))


def kernel_ridge_tuned(x_train, y_train, x_val, y_val, x_test, statistic=total_r2,
                       alphas=(0.1, 0.3, 1.0, 3.0, 10.0), gammas=(0.03, 0.1, 0.3, 1.0)) -> dict:
    """RBF kernel ridge regression fitted on training cells, (alpha, gamma) chosen by ``statistic`` on
    validation cells, applied to test cells.

    Inputs are standardised on training cells; ``gamma`` is relative to the number of input columns
    (kernel ``exp(-gamma / d * |x - x'|^2)``); outputs are centred on the training mean. One
    eigendecomposition per gamma serves every alpha. Returns ``{"test", "val", "val_score", "alpha",
    "gamma"}`` (predictions of the chosen model).
    """
    xtr, xva, xte = (np.asarray(a, dtype=np.float64) for a in (x_train, x_val, x_test))
    ytr, yva = _2d(np.asarray(y_train, dtype=np.float64)), _2d(np.asarray(y_val, dtype=np.float64))
    sc = StandardScaler().fit(xtr)
    xtr, xva, xte = sc.transform(xtr), sc.transform(xva), sc.transform(xte)
    mu = ytr.mean(0)
    d = xtr.shape[1]
    best = None
    for g in gammas:
        k_tr = np.exp(-g / d * _sq_dist(xtr, xtr))
        k_va, k_te = np.exp(-g / d * _sq_dist(xva, xtr)), np.exp(-g / d * _sq_dist(xte, xtr))
        w, v = np.linalg.eigh(k_tr)
        vy = v.T @ (ytr - mu)
        for a in alphas:
            coef = v @ (vy / (np.maximum(w, 0) + a)[:, None])
            pv = k_va @ coef + mu
            s = statistic(yva, pv)
            if best is None or s > best["val_score"]:
                best = dict(val_score=float(s), alpha=float(a), gamma=float(g), val=pv, test=k_te @ coef + mu)
    return best


def baselines(x_train, y_train, x_test, k: int = 15) -> dict[str, np.ndarray]:
    """Test-set predictions of the mean, ridge and kNN baselines, all fitted on training cells."""
    return {
        "mean": mean_baseline(y_train, len(x_test)),
        "ridge": ridge_baseline(x_train, y_train, x_test),
        "knn": knn_baseline(x_train, y_train, x_test, k=k),
    }


# ---------------------------------------------------------------------------------------
# reference metrics (parity with the published COSMIC evaluation)
def within_group_pearson(y, pred, groups, min_cells: int = 5, constant_prediction: float = 0.0) -> dict:
    """Per-feature Pearson computed *within* each group of cells, summarised over features, then groups.

    For every group (e.g. cell type, or cell type x sample) with at least ``min_cells`` cells the
    per-feature Pearson over its cells is taken (features constant in the group are skipped; a
    prediction constant in the group scores ``constant_prediction``, 0 by default: a prediction
    that only knows the group carries no within-group information). Returns
    ``{"mean", "median", "n_groups", "per_group"}``: ``mean``/``median`` average, over groups, the
    per-group mean/median over features; ``per_group[g] = {"n_cells", "n_features", "mean", "median"}``.
    """
    y, pred = _2d(y), _2d(pred)
    groups = np.asarray(groups).astype(str)
    per = {}
    for g in np.unique(groups):
        sel = groups == g
        if sel.sum() < max(2, min_cells):
            continue
        r = pearson_per_feature(y[sel], pred[sel], constant_prediction=constant_prediction)
        r = r[np.isfinite(r)]
        per[str(g)] = dict(n_cells=int(sel.sum()), n_features=int(len(r)),
                           mean=float(r.mean()) if len(r) else float("nan"),
                           median=float(np.median(r)) if len(r) else float("nan"))
    means = [v["mean"] for v in per.values() if np.isfinite(v["mean"])]
    medians = [v["median"] for v in per.values() if np.isfinite(v["median"])]
    return dict(mean=float(np.mean(means)) if means else float("nan"),
                median=float(np.mean(medians)) if medians else float("nan"), n_groups=len(means), per_group=per)


def permute_within_groups(a, groups, seed: int = 0) -> np.ndarray:
    """Rows of ``a`` shuffled within each group (seeded): keeps the group identity of every row and
    destroys everything else, the null for within-group correlations."""
    a = np.asarray(a)
    groups = np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    idx = np.arange(len(a))
    for g in np.unique(groups):
        sel = np.flatnonzero(groups == g)
        idx[sel] = rng.permutation(sel)
    return a[idx]


def classifier_transfer(x_train, labels_train, x_eval: dict, labels_eval, standardise: bool = True,
                        C: float = 1.0, max_iter: int = 1000) -> tuple[dict, dict]:
    """Logistic-regression classifier fitted on ``x_train`` (real training cells) and applied to
    each array of ``x_eval`` (e.g. predicted and real expression of the same test cells).

    Returns ``(accuracy, predictions)``: ``accuracy[k]`` is the fraction of rows of ``x_eval[k]``
    whose predicted label equals ``labels_eval``, plus ``n_classes`` and ``chance_majority`` (the
    accuracy of always answering the most frequent training label); ``predictions[k]`` the labels.
    With a single training class every prediction is that class.
    """
    from sklearn.linear_model import LogisticRegression

    labels_train, labels_eval = np.asarray(labels_train).astype(str), np.asarray(labels_eval).astype(str)
    x_train = np.asarray(x_train, dtype=np.float64)
    values, counts = np.unique(labels_train, return_counts=True)
    acc = dict(n_classes=int(len(values)), chance_majority=float((labels_eval == values[counts.argmax()]).mean()))
    if len(values) < 2:
        preds = {k: np.full(len(v), values[0]) for k, v in x_eval.items()}
    else:
        sc = StandardScaler(with_mean=standardise, with_std=standardise).fit(x_train)
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(sc.transform(x_train), labels_train)
        preds = {k: clf.predict(sc.transform(np.asarray(v, dtype=np.float64))) for k, v in x_eval.items()}
    for k, p in preds.items():
        acc[k] = float((p == labels_eval).mean())
    return acc, preds


def confusion_counts(true, pred, labels=None) -> pd.DataFrame:
    """``true x predicted`` table of cell counts (rows: true labels, columns: predicted labels)."""
    true, pred = np.asarray(true).astype(str), np.asarray(pred).astype(str)
    labels = sorted(set(true) | set(pred)) if labels is None else [str(x) for x in labels]
    pos = {v: i for i, v in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(m, ([pos[v] for v in true], [pos[v] for v in pred]), 1)
    return pd.DataFrame(m, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))


# --- two-sample (real vs generated) distribution metrics
def sliced_wasserstein(x, y, n_projections: int = 128, p: int = 2, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of the rows of ``x`` and ``y``.

    POT's estimator (``ot.sliced_wasserstein_distance``, the one the published COSMIC evaluation
    uses, and the one ``cosmic.evaluation.generation`` uses): ``n_projections`` random unit
    directions (seeded, uniform on the sphere), on each the exact 1-D 2-Wasserstein distance of the
    projected samples (uniform weights, any two sizes); returns ``(mean over directions of W_2^2)^(1/2)``.
    Lower is better; 0 for identical sets; a shift by a vector ``s`` gives about ``|s| / sqrt(dims)``.
    Only ``p = 2`` is supported (one estimator everywhere); any other ``p`` raises ValueError.
    """
    import ot

    if p != 2:
        raise ValueError(f"sliced_wasserstein: only p=2 is supported (POT's sliced W2), got p={p!r}")
    x, y = _2d(x), _2d(y)
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=int(n_projections), p=2, seed=int(seed)))


def classifier_two_sample_accuracy(real, generated, cv: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a real-vs-generated classifier (0.5: indistinguishable).

    The classifier is linear discriminant analysis with Ledoit-Wolf shrinkage on the features and
    their squares, standardised on the training folds (the squares make differences in spread,
    not only in location, detectable: a collapsed generator is caught). Stratified ``cv``-fold
    (seeded); accuracy over all held-out cells. NaN with fewer than two cells per side. Closed
    form, so it costs milliseconds. Like k-NNA it can read below 0.5 when generated cells copy
    real ones.
    """
    from sklearn.covariance import ledoit_wolf

    a, b = _2d(real), _2d(generated)
    n_min = min(len(a), len(b))
    if n_min < 2:
        return float("nan")
    k = int(min(cv, n_min))
    z = np.vstack([a, b])
    lab = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(z), int)
    for cls in (False, True):
        idx = np.flatnonzero(lab == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    correct = 0
    for f in range(k):
        tr, te = fold != f, fold == f
        mu, sd = z[tr].mean(0), z[tr].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        u = (z - mu) / sd
        x = np.hstack([u, u ** 2 - 1.0])
        xt, yt = x[tr], lab[tr]
        m0, m1 = xt[~yt].mean(0), xt[yt].mean(0)
        resid = np.where(yt[:, None], xt - m1, xt - m0)
        cov = ledoit_wolf(resid, assume_centered=True)[0]
        cov += 1e-9 * (np.trace(cov) / len(cov) + 1e-12) * np.eye(len(cov))
        w = np.linalg.solve(cov, m1 - m0)
        bias = -w @ (m0 + m1) / 2 + np.log(yt.mean() / (1 - yt.mean()))
        correct += int(((x[te] @ w + bias > 0) == lab[te]).sum())
    return float(correct / len(z))


def two_sample_metrics(real, generated, seed: int = 0, n_projections: int = 128, cv: int = 5,
                       max_cells: int = 2000) -> dict:
    """Sliced Wasserstein, k-NNA, coverage and classifier accuracy of ``generated`` against ``real``.

    Both sets are first subsampled (seeded, without replacement) to the same size, at most
    ``max_cells``, so that k-NNA and the classifier read 0.5 and coverage is comparable across
    methods. Returns ``{"sliced_wasserstein", "knn_accuracy", "coverage", "classifier_accuracy", "n_cells"}``.
    """
    from .evaluation.generation import coverage, knn_accuracy

    a, b = _2d(real), _2d(generated)
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), int(max_cells))
    if len(a) > n:
        a = a[np.sort(rng.choice(len(a), n, replace=False))]
    if len(b) > n:
        b = b[np.sort(rng.choice(len(b), n, replace=False))]
    return dict(sliced_wasserstein=sliced_wasserstein(a, b, n_projections, seed=seed),
                knn_accuracy=knn_accuracy(a, b, k=1), coverage=coverage(a, b),
                classifier_accuracy=classifier_two_sample_accuracy(a, b, cv=cv, seed=seed), n_cells=int(n))
