"""Held-out evaluation metrics and baselines for cross-modal prediction.

Conventions: ``y`` and predictions are ``cells x features`` arrays of the *test* cells; R² uses
the test-set mean (``1 - SSE / SS_tot``), so a predictor no better than the test mean scores
<= 0. Baselines are fitted on training cells only and evaluated on the same test cells.
"""

from __future__ import annotations

import numpy as np
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


def pearson_per_feature(y, pred) -> np.ndarray:
    """Per-feature Pearson correlation; NaN where either side is constant."""
    y, pred = _2d(y), _2d(pred)
    yc, pc = y - y.mean(0), pred - pred.mean(0)
    den = np.sqrt((yc ** 2).sum(0) * (pc ** 2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (yc * pc).sum(0) / np.where(den > 0, den, 1.0), np.nan)


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
    stats = np.array([statistic(y[i], pred[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(n_boot))])
    a = (1 - level) / 2
    q_lo, q_hi = np.nanquantile(stats, [a, 1 - a])
    # basic (reverse-percentile) interval: corrects the small downward bias of resampled R²
    # (duplicated cells shrink SS_tot), so the interval stays centred on the estimate
    lo, hi = 2 * value - q_hi, 2 * value - q_lo
    return {"value": value, "ci_low": float(lo), "ci_high": float(hi), "n_boot": int(n_boot)}


# ---------------------------------------------------------------------------------------
# cross-modal matching
def _sq_dist(a, b) -> np.ndarray:
    a, b = _2d(a), _2d(b)
    d = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def _true_rank(dist: np.ndarray) -> np.ndarray:
    """Per row i, the rank of column i among all columns (0 = closest; ties count half)."""
    diag = np.diag(dist)[:, None]
    closer = (dist < diag).sum(1)
    ties = (dist == diag).sum(1) - 1
    return closer + 0.5 * ties


def foscttm(x, y) -> float:
    """Fraction Of Samples Closer Than the True Match, averaged over both directions.

    Row i of ``x`` and row i of ``y`` are the same cell (e.g. generated vs observed
    representations). 0 = every cell is closest to its partner; ~0.5 = random. Ties count half,
    so a constant prediction scores 0.5.
    """
    d = _sq_dist(x, y)
    n = len(d)
    if n < 2:
        return float("nan")
    return float((_true_rank(d).mean() + _true_rank(d.T).mean()) / 2 / (n - 1))


def topk_retrieval(query, reference, k: int = 1) -> float:
    """Fraction of queries whose true partner (same row) is among the ``k`` nearest references."""
    rank = _true_rank(_sq_dist(query, reference))
    return float((rank < k).mean())


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
    """Predict the training mean for every test cell."""
    y_train = _2d(y_train)
    return np.repeat(y_train.mean(0, keepdims=True), n_test, axis=0)


def ridge_baseline(x_train, y_train, x_test, alphas=RIDGE_ALPHAS) -> np.ndarray:
    """RidgeCV (alpha chosen by efficient leave-one-out on training cells) on standardised inputs."""
    sc = StandardScaler().fit(x_train)
    model = RidgeCV(alphas=alphas).fit(sc.transform(x_train), _2d(y_train))
    return model.predict(sc.transform(x_test))


def knn_baseline(x_train, y_train, x_test, k: int = 15) -> np.ndarray:
    """k-nearest-neighbours regression (uniform average of the k closest training cells)."""
    sc = StandardScaler().fit(x_train)
    k = max(1, min(int(k), len(x_train)))
    model = KNeighborsRegressor(n_neighbors=k).fit(sc.transform(x_train), _2d(y_train))
    return model.predict(sc.transform(x_test))


def baselines(x_train, y_train, x_test, k: int = 15) -> dict[str, np.ndarray]:
    """Test-set predictions of the mean, ridge and kNN baselines, all fitted on training cells."""
    return {
        "mean": mean_baseline(y_train, len(x_test)),
        "ridge": ridge_baseline(x_train, y_train, x_test),
        "knn": knn_baseline(x_train, y_train, x_test, k=k),
    }
