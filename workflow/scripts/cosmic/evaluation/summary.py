"""Per-split scores summarised over repeated held-out splits: ``summary.tsv`` and ``paired.tsv``.

Every metric of every method is computed once per split (test cells of that split only). The
summary gives, per (direction, space, metric, method), the mean over splits, the SD and a 95 %
confidence interval; the paired table gives, per split, the difference between a method and a
baseline on the *same* split, and the same statistics of those differences.

Confidence intervals use Student's t over splits with the Nadeau–Bengio correction for
overlapping training sets: the variance of the mean is ``(1/n + n_test/n_train) · s²`` instead of
``s²/n``, because repeated random splits share most of their training cells and a plain t
interval would be too narrow (Nadeau & Bengio 2003, "Inference for the generalization error").
With one split the interval is undefined (NaN).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

# metric -> which way is better: "higher", "lower", or "half" (closest to 0.5 is ideal)
METRICS = {
    "weighted_r2": "higher",
    "median_gene_pearson": "higher",
    "within_type_pearson": "higher",
    "conditional_r2": "higher",
    "foscttm": "lower",
    "swd": "lower",
    "knna_k1": "half",
    "knna_k100": "half",
    "cov_equal": "higher",
    "cov_10to1": "higher",
    "frechet": "lower",
    "coherence_gap": "lower",
    "nucleus_found": "higher",
    "position_agreement": "higher",
    "interval_coverage": "",  # reported only: the ideal is the interval level (cosmic.interval_level)
}
DIRECTIONS = ("rna_from_morphology", "morphology_from_rna", "cell_cycle")
# Methods every model is compared with (paired.tsv's `baseline` column).
BASELINES = ("mean", "ridge", "spline_ridge", "knn", "ridge_residual", "nearest_rna", "rna_pc_angle")
PER_SPLIT_COLUMNS = ("direction", "space", "metric", "method", "split", "value", "n_train", "n_test")
SUMMARY_COLUMNS = ("direction", "space", "metric", "method", "mean", "sd", "ci_low", "ci_high", "n_splits",
                   "better")
PAIRED_COLUMNS = ("direction", "space", "metric", "method", "baseline", "diff_mean", "ci_low", "ci_high",
                  "n_splits", "better", "method_better")


def _interval(values: np.ndarray, test_train_ratio: float, level: float = 0.95) -> tuple[float, float, float]:
    """Mean, SD and the corrected t interval of per-split values (NaN values dropped)."""
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), (float("nan"), float("nan"))
    mean = float(values.mean())
    if n == 1:
        return mean, float("nan"), (float("nan"), float("nan"))
    sd = float(values.std(ddof=1))
    half = stats.t.ppf((1 + level) / 2, n - 1) * np.sqrt((1.0 / n + test_train_ratio) * sd ** 2)
    return mean, sd, (mean - half, mean + half)


def _ratio(rows: pd.DataFrame) -> float:
    """Mean n_test / n_train over the splits (0 when unknown: the plain t interval)."""
    if {"n_train", "n_test"} <= set(rows) and rows["n_train"].gt(0).all():
        return float((rows["n_test"] / rows["n_train"]).mean())
    return 0.0


def summarise(per_split: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """``summary.tsv``: one row per (direction, space, metric, method) over the splits."""
    rows = []
    for key, group in per_split.groupby(["direction", "space", "metric", "method"], sort=False):
        by_split = group.groupby("split")["value"].mean()
        mean, sd, (low, high) = _interval(by_split.to_numpy(float), _ratio(group), level)
        rows.append(dict(zip(("direction", "space", "metric", "method"), key), mean=mean, sd=sd, ci_low=low,
                         ci_high=high, n_splits=int(np.isfinite(by_split.to_numpy(float)).sum()),
                         better=METRICS.get(key[2], "")))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _verdict(low: float, high: float, better: str) -> str:
    """'yes' / 'no' when the interval of (method - baseline) excludes 0, else 'unclear'.

    For "half" metrics the interval passed is that of the difference in distance to 0.5."""
    if not np.isfinite(low) or not np.isfinite(high):
        return "unclear"
    if low > 0:
        return "yes" if better == "higher" else "no"
    if high < 0:
        return "yes" if better in ("lower", "half") else "no"
    return "unclear"


def paired_differences(per_split: pd.DataFrame, baselines=BASELINES, level: float = 0.95) -> pd.DataFrame:
    """``paired.tsv``: every non-baseline method minus every baseline, split by split (same test cells).

    ``method_better`` says whether the interval shows the method better (``yes``), worse (``no``) or
    neither (``unclear``), by the metric's direction; for k-NNA (ideal 0.5) it reads the paired
    difference of the distances to 0.5."""
    rows = []
    for key, group in per_split.groupby(["direction", "space", "metric"], sort=False):
        table = group.pivot_table(index="split", columns="method", values="value", aggfunc="mean")
        methods = [m for m in table.columns if m not in baselines]
        better = METRICS.get(key[2], "")
        for method in methods:
            for baseline in (b for b in baselines if b in table.columns):
                both = table[[method, baseline]].dropna()
                diff = (both[method] - both[baseline]).to_numpy(float)
                mean, _, (low, high) = _interval(diff, _ratio(group), level)
                if better == "half":  # the verdict compares distances to the ideal 0.5
                    gap = ((both[method] - 0.5).abs() - (both[baseline] - 0.5).abs()).to_numpy(float)
                    _, _, (gap_low, gap_high) = _interval(gap, _ratio(group), level)
                    verdict = _verdict(gap_low, gap_high, better)
                else:
                    verdict = _verdict(low, high, better)
                rows.append(dict(zip(("direction", "space", "metric"), key), method=method, baseline=baseline,
                                 diff_mean=mean, ci_low=low, ci_high=high, n_splits=int(len(diff)), better=better,
                                 method_better=verdict))
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def best_baseline(summary: pd.DataFrame, direction: str, metric: str, space: str = "features") -> str | None:
    """The baseline with the best mean on ``metric`` (by the metric's 'better' rule), or None."""
    rows = summary[(summary["direction"] == direction) & (summary["metric"] == metric)
                   & (summary["space"] == space) & summary["method"].isin(BASELINES)]
    rows = rows[np.isfinite(rows["mean"])]
    if rows.empty:
        return None
    better = METRICS.get(metric, "higher")
    score = -(rows["mean"] - 0.5).abs() if better == "half" else (rows["mean"] if better == "higher" else -rows["mean"])
    return str(rows.loc[score.idxmax(), "method"])


def cell_cycle_rows(agreement: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summary and paired rows of the cell-cycle position (``analysis/cell_cycle/position_agreement.tsv``).

    The position is fitted on all cells without labels, so there are no held-out splits: ``n_splits``
    is 1 and the intervals are percentile bootstraps over cells (paired for the difference)."""
    if agreement.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS)), pd.DataFrame(columns=list(PAIRED_COLUMNS))
    base = agreement["baseline"].isna() | (agreement["baseline"].astype(str) == "")
    scores = agreement[base].assign(sd=float("nan"), n_splits=1, better="higher")
    summary = scores.assign(space=scores["space"] + ":" + scores["reference"])[list(SUMMARY_COLUMNS)]
    diffs = agreement[~base]
    paired = pd.DataFrame(dict(
        direction=diffs["direction"], space=diffs["space"] + ":" + diffs["reference"], metric=diffs["metric"],
        method=diffs["method"], baseline=diffs["baseline"], diff_mean=diffs["diff_mean"],
        ci_low=diffs["diff_ci_low"], ci_high=diffs["diff_ci_high"], n_splits=1, better="higher"))
    paired["method_better"] = [_verdict(lo, hi, "higher") for lo, hi in zip(paired["ci_low"], paired["ci_high"])]
    return summary.reset_index(drop=True), paired[list(PAIRED_COLUMNS)].reset_index(drop=True)
