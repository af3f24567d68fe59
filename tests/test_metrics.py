"""Tests of cosmic.metrics and cosmic.splits on toy cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cosmic import metrics as M
from cosmic.errors import CosmicInputError
from cosmic.splits import make_splits


def test_r2_exact_link_is_one_and_noise_is_about_zero():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2000, 5)) * [1, 2, 3, 4, 5]
    assert np.allclose(M.r2_per_feature(y, y), 1.0)
    assert M.total_r2(y, y) == pytest.approx(1.0)
    noise = rng.normal(size=y.shape) * 0.01  # an independent "prediction" near the mean
    assert np.all(np.abs(M.r2_per_feature(y, noise)) < 0.01)
    indep = rng.normal(size=y.shape) * y.std(0)  # independent noise of the same scale: R² ≈ -1
    assert M.total_r2(y, indep) == pytest.approx(-1.0, abs=0.1)
    assert np.allclose(M.pearson_per_feature(y, 3 * y + 1), 1.0)
    assert np.all(np.abs(M.pearson_per_feature(y, noise)) < 0.1)


def test_r2_uses_test_mean_and_totals_weight_by_variance():
    y = np.array([[0.0, 0.0], [2.0, 20.0]])
    pred = np.array([[1.0, 0.0], [1.0, 20.0]])  # feature 0 = test mean (R² 0), feature 1 exact (R² 1)
    assert np.allclose(M.r2_per_feature(y, pred), [0.0, 1.0])
    assert M.mean_r2(y, pred) == pytest.approx(0.5)
    assert M.total_r2(y, pred) == pytest.approx(1 - 2 / (2 + 200))
    assert np.isnan(M.r2_per_feature(np.ones((4, 1)), np.zeros((4, 1)))[0])


def test_bootstrap_ci_contains_value_and_narrows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    y = x + rng.normal(size=x.shape)  # R² = 0.5
    ci = M.bootstrap_ci(y, x, M.total_r2, n_boot=200, seed=0)
    assert ci["ci_low"] < ci["value"] < ci["ci_high"]
    assert ci["ci_low"] > 0.4 and ci["ci_high"] < 0.6
    assert M.bootstrap_ci(y, x, n_boot=0)["n_boot"] == 0


def test_foscttm_identical_is_zero_random_is_half():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8))
    assert M.foscttm(x, x) == 0.0
    assert M.topk_retrieval(x, x, 1) == 1.0
    r = M.foscttm(x, rng.normal(size=x.shape))
    assert r == pytest.approx(0.5, abs=0.05)
    assert M.topk_retrieval(x, rng.normal(size=x.shape), 10) == pytest.approx(10 / 300, abs=0.04)
    # a constant prediction carries no information: ties count half
    assert M.foscttm(np.zeros_like(x), x) == pytest.approx(0.5)


def test_coverage_of_calibrated_gaussian():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(400, 4))
    y = mu + rng.normal(size=mu.shape)
    samples = mu[None] + rng.normal(size=(200, *mu.shape))
    cov = M.interval_coverage(y, samples, 0.9)
    assert cov["coverage"] == pytest.approx(0.9, abs=0.03)
    assert M.interval_coverage(y, mu[None] + 0.1 * rng.normal(size=(200, *mu.shape)), 0.9)["coverage"] < 0.3


def test_baselines_fit_on_train_only():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 3))
    y = x @ rng.normal(size=(3, 5)) + 0.1 * rng.normal(size=(600, 5))
    b = M.baselines(x[:400], y[:400], x[400:], k=10)
    assert set(b) == {"mean", "ridge", "knn"}
    assert all(v.shape == (200, 5) for v in b.values())
    assert np.allclose(b["mean"], y[:400].mean(0))
    assert M.total_r2(y[400:], b["ridge"]) > 0.95
    assert M.total_r2(y[400:], b["knn"]) > 0.7
    assert M.total_r2(y[400:], b["mean"]) < 0.01


# ---------------------------------------------------------------------------------------
# splits
def _obs(n_a=300, n_b=100):
    return pd.DataFrame({"sample": ["a"] * n_a + ["b"] * n_b}, index=[f"c{i}" for i in range(n_a + n_b)])


def test_split_partitions_and_stratifies():
    obs = _obs()
    s = make_splits(obs, (0.7, 0.15, 0.15), seed=0)
    assert s.index.equals(obs.index) and set(s.unique()) == {"train", "val", "test"}
    for sample, n in (("a", 300), ("b", 100)):
        counts = s[obs["sample"] == sample].value_counts()
        assert counts["test"] == round(0.15 * n) and counts["val"] == round(0.15 * n)
        assert counts["train"] == n - 2 * round(0.15 * n)
    assert make_splits(obs, seed=0).equals(s)
    assert not make_splits(obs, seed=1).equals(s)


def test_split_holdout_samples():
    obs = _obs()
    s = make_splits(obs, (0.7, 0.15, 0.15), seed=0, holdout_samples=["b"])
    assert (s[obs["sample"] == "b"] == "test").all()
    assert not (s[obs["sample"] == "a"] == "test").any()
    assert (s[obs["sample"] == "a"] == "val").sum() == round(300 * 0.15 / 0.85)
    with pytest.raises(CosmicInputError, match="not samples"):
        make_splits(obs, holdout_samples=["zzz"])
    with pytest.raises(CosmicInputError, match="every sample"):
        make_splits(obs, holdout_samples=["a", "b"])
    with pytest.raises(CosmicInputError, match="fractions"):
        make_splits(obs, fractions=(0.5, 0.1, 0.1))
