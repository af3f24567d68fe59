"""Repeated-split summaries: means, corrected t intervals, paired differences and their verdicts."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cosmic.evaluation.summary import (PAIRED_COLUMNS, SUMMARY_COLUMNS, best_baseline, paired_differences,
                                       summarise)


def _per_split(values: dict, metric="weighted_r2", n_train=700, n_test=150):
    rows = []
    for method, per in values.items():
        for split, value in enumerate(per):
            rows.append(dict(direction="rna_from_morphology", space="features", metric=metric, method=method,
                             split=split, value=value, n_train=n_train, n_test=n_test))
    return pd.DataFrame(rows)


def test_summary_mean_sd_and_corrected_interval():
    values = [0.10, 0.12, 0.08, 0.11, 0.09]
    summary = summarise(_per_split({"cosmic": values}))
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    row = summary.iloc[0]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert row["sd"] == pytest.approx(np.std(values, ddof=1))
    # Nadeau-Bengio: var(mean) = (1/n + n_test/n_train) s^2
    half = stats.t.ppf(0.975, 4) * np.sqrt((1 / 5 + 150 / 700) * np.var(values, ddof=1))
    assert row["ci_low"] == pytest.approx(np.mean(values) - half)
    assert row["ci_high"] == pytest.approx(np.mean(values) + half)
    assert row["n_splits"] == 5 and row["better"] == "higher"


def test_single_split_has_no_interval():
    row = summarise(_per_split({"cosmic": [0.1]})).iloc[0]
    assert row["mean"] == pytest.approx(0.1) and np.isnan(row["ci_low"]) and np.isnan(row["sd"])


def test_paired_differences_are_taken_split_by_split():
    # the split effect is shared: the paired interval is narrow although each method varies a lot
    shared = np.array([0.0, 0.3, -0.2, 0.25, -0.1])
    per_split = _per_split({"cosmic": list(0.15 + shared + [0.001, -0.001, 0.0, 0.002, -0.002]),
                            "ridge": list(0.10 + shared), "mean": list(0.0 * shared)})
    paired = paired_differences(per_split)
    assert list(paired.columns) == list(PAIRED_COLUMNS)
    vs_ridge = paired[paired["baseline"] == "ridge"].iloc[0]
    assert vs_ridge["method"] == "cosmic" and vs_ridge["n_splits"] == 5
    assert vs_ridge["diff_mean"] == pytest.approx(0.05, abs=1e-3)
    assert vs_ridge["ci_low"] > 0 and vs_ridge["method_better"] == "yes"
    # baselines are not compared with each other
    assert set(paired["method"]) == {"cosmic"}
    assert set(paired["baseline"]) == {"ridge", "mean"}


def test_verdicts_follow_the_direction_of_each_metric():
    lower = paired_differences(_per_split({"cosmic": [1.0, 1.1, 0.9], "ridge_residual": [2.0, 2.1, 1.9]},
                                          metric="frechet"))
    assert lower.iloc[0]["method_better"] == "yes"  # lower Fréchet distance is better
    half = paired_differences(_per_split({"cosmic": [0.70, 0.72, 0.71], "nearest_rna": [0.55, 0.56, 0.54]},
                                         metric="knna_k1"))
    assert half.iloc[0]["method_better"] == "no"  # 0.71 is farther from 0.5 than 0.55
    unclear = paired_differences(_per_split({"cosmic": [0.1, 0.3, 0.2], "ridge": [0.2, 0.1, 0.3]}))
    assert unclear.iloc[0]["method_better"] == "unclear"


def test_best_baseline_respects_the_metric_direction():
    per_split = pd.concat([_per_split({"ridge": [0.1, 0.1], "knn": [0.2, 0.2], "cosmic": [0.9, 0.9]}),
                           _per_split({"ridge": [0.6, 0.6], "nearest_rna": [0.52, 0.52]}, metric="knna_k100")])
    summary = summarise(per_split)
    assert best_baseline(summary, "rna_from_morphology", "weighted_r2") == "knn"  # cosmic is not a baseline
    assert best_baseline(summary, "rna_from_morphology", "knna_k100") == "nearest_rna"
    assert best_baseline(summary, "rna_from_morphology", "swd") is None


def test_cell_cycle_rows_join_the_summary():
    from cosmic.evaluation.summary import cell_cycle_rows

    table = pd.DataFrame([
        dict(direction="cell_cycle", space="rna", metric="position_agreement", method="cosmic", baseline=None,
             reference="fucci_theta", mean=0.40, ci_low=0.36, ci_high=0.45, n_cells=888),
        dict(direction="cell_cycle", space="rna", metric="position_agreement", method="rna_pc_angle", baseline=None,
             reference="fucci_theta", mean=0.46, ci_low=0.42, ci_high=0.49, n_cells=888),
        dict(direction="cell_cycle", space="rna", metric="position_agreement", method="cosmic",
             baseline="rna_pc_angle", reference="fucci_theta", diff_mean=-0.06, diff_ci_low=-0.09,
             diff_ci_high=-0.02, n_cells=888)])
    summary, paired = cell_cycle_rows(table)
    assert list(summary.columns) == list(SUMMARY_COLUMNS) and len(summary) == 2
    assert set(summary["space"]) == {"rna:fucci_theta"} and (summary["n_splits"] == 1).all()
    assert paired.iloc[0]["method_better"] == "no" and paired.iloc[0]["diff_mean"] == pytest.approx(-0.06)
    empty_summary, empty_paired = cell_cycle_rows(table.iloc[0:0])
    assert empty_summary.empty and empty_paired.empty
