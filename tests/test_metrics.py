"""Tests of cosmic.metrics and cosmic.splits on toy cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cosmic import metrics as M
from cosmic.evaluation import generation as G
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


# ---------------------------------------------------------------------------------------
# reference metrics (published COSMIC evaluation)
def test_pearson_constant_prediction_and_detected_cells():
    rng = np.random.default_rng(10)
    y = rng.normal(size=(200, 3))
    const = np.repeat(rng.normal(size=(1, 3)), 200, 0)
    assert np.isnan(M.pearson_per_feature(y, const)).all()  # undefined by default
    assert np.allclose(M.pearson_per_feature(y, const, constant_prediction=0.0), 0.0)
    # a gene measured exactly where detected, zero elsewhere: prediction right on detected cells only
    truth = rng.normal(3, 1, size=(300, 1))
    detected = rng.random((300, 1)) < 0.5
    y = np.where(detected, truth, 0.0)
    pred = truth  # knows the level, not the dropout
    assert M.masked_pearson_per_feature(y, pred, detected)[0] == pytest.approx(1.0)
    assert M.pearson_per_feature(y, pred)[0] < 0.5
    assert np.isnan(M.masked_pearson_per_feature(y, pred, np.zeros_like(detected)))[0]
    few = np.zeros_like(detected)
    few[:4] = True
    assert np.isnan(M.masked_pearson_per_feature(y, pred, few, min_cells=5))[0]
    # all-cells mask is the plain Pearson
    x = rng.normal(size=(100, 4))
    z = x + rng.normal(size=x.shape)
    np.testing.assert_allclose(M.masked_pearson_per_feature(z, x, np.ones_like(x, bool)), M.pearson_per_feature(z, x))


def test_within_type_pearson_removes_cell_identity():
    rng = np.random.default_rng(11)
    types = np.repeat(["a", "b", "c"], 200)
    type_means = {"a": -3.0, "b": 0.0, "c": 3.0}
    level = np.array([type_means[t] for t in types])[:, None] + np.zeros((1, 5))
    y = level + rng.normal(size=(600, 5))
    pred = level  # the type mean: knows identity, nothing within a type
    assert np.all(M.pearson_per_feature(y, pred) > 0.9)
    w = M.within_group_pearson(y, pred, types)
    assert w["mean"] == 0.0 and w["median"] == 0.0 and w["n_groups"] == 3
    assert set(w["per_group"]) == {"a", "b", "c"} and w["per_group"]["a"]["n_cells"] == 200
    exact = M.within_group_pearson(y, y, types)
    assert exact["mean"] == pytest.approx(1.0)
    # a prediction with real within-type signal keeps it; permuting within type destroys it
    good = y + 0.5 * rng.normal(size=y.shape)
    assert M.within_group_pearson(y, good, types)["mean"] > 0.8
    shuffled = M.permute_within_groups(good, types, seed=0)
    assert abs(M.within_group_pearson(y, shuffled, types)["mean"]) < 0.1
    assert np.all(M.pearson_per_feature(y, shuffled) > 0.8)  # the overall score survives the shuffle
    # the permutation keeps each row inside its group and is seeded
    idx = M.permute_within_groups(np.arange(600), types, seed=0)
    assert np.array_equal(types[idx], types) and sorted(idx) == list(range(600))
    assert np.array_equal(idx, M.permute_within_groups(np.arange(600), types, seed=0))
    assert not np.array_equal(idx, M.permute_within_groups(np.arange(600), types, seed=1))
    # groups smaller than min_cells are skipped
    assert M.within_group_pearson(y[:203], y[:203], types[:203], min_cells=5)["n_groups"] == 1


def test_classifier_transfer_and_confusion():
    rng = np.random.default_rng(12)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    lab = np.repeat(["x", "y", "z"], 100)
    x = centres[np.repeat([0, 1, 2], 100)] + rng.normal(size=(300, 3))
    acc, pred = M.classifier_transfer(x[::2], lab[::2], {"real": x[1::2], "mean": np.zeros((150, 3)) + x.mean(0),
                                                          "noise": rng.normal(size=(150, 3)) * 5}, lab[1::2])
    assert acc["real"] == 1.0 and acc["n_classes"] == 3
    assert acc["chance_majority"] == pytest.approx(1 / 3, abs=0.01)
    assert len(set(pred["mean"])) == 1 and acc["mean"] == pytest.approx(1 / 3, abs=0.01)
    assert acc["noise"] < 0.6
    c = M.confusion_counts(["a", "a", "b", "b"], ["a", "b", "b", "b"], labels=["a", "b", "c"])
    assert c.loc["a"].tolist() == [1, 1, 0] and c.loc["b"].tolist() == [0, 2, 0] and c.loc["c"].sum() == 0
    one, p1 = M.classifier_transfer(x, np.full(300, "only"), {"real": x}, lab)
    assert set(p1["real"]) == {"only"} and one["n_classes"] == 1


def test_sliced_wasserstein_zero_for_identical_and_grows_with_shift():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(400, 8))
    assert M.sliced_wasserstein(x, x) == 0.0
    assert M.sliced_wasserstein(x, x[rng.permutation(400)]) == pytest.approx(0.0, abs=1e-12)  # order-free
    d = [M.sliced_wasserstein(x, x + s * np.eye(8)[0]) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(d, d[1:]))
    # for a pure shift s, SW_2 = sqrt(E[(theta . s)^2]) = |s| / sqrt(dims): here |s| = sqrt(8), dims = 8
    assert M.sliced_wasserstein(x, x + np.ones(8), n_projections=4000) == pytest.approx(1.0, rel=0.05)
    # unequal sizes from the same distribution stay near 0, far below a shift
    assert M.sliced_wasserstein(x, rng.normal(size=(150, 8))) < 0.2 < d[1]
    assert M.sliced_wasserstein(x, x + 1, seed=3) == M.sliced_wasserstein(x, x + 1, seed=3)


def test_sliced_wasserstein_is_pots_estimator_and_only_p2():
    import ot

    rng = np.random.default_rng(18)
    x, y = rng.normal(size=(300, 6)), 0.8 * rng.normal(size=(120, 6)) + 0.3  # unequal sizes too
    for seed in (0, 5):
        pot = ot.sliced_wasserstein_distance(x, y, n_projections=64, p=2, seed=seed)
        assert M.sliced_wasserstein(x, y, n_projections=64, seed=seed) == pytest.approx(pot, rel=1e-12)
    # a pure shift s moves every projection by theta.s: exactly sqrt(mean (theta.s)^2) over POT's directions
    s = np.arange(6.0) - 2.0
    theta = ot.sliced.get_random_projections(6, 128, seed=2)
    assert M.sliced_wasserstein(x, x + s, seed=2) == pytest.approx(np.sqrt(np.mean((s @ theta) ** 2)), rel=1e-9)
    with pytest.raises(ValueError, match="p=2"):
        M.sliced_wasserstein(x, y, p=1)
    assert np.isnan(M.sliced_wasserstein(x[:0], y))


def test_knn_accuracy_half_for_same_distribution_one_for_separated():
    rng = np.random.default_rng(14)
    real, same = rng.normal(size=(500, 5)), rng.normal(size=(500, 5))
    assert G.knn_accuracy(real, same) == pytest.approx(0.5, abs=0.06)
    assert G.knn_accuracy(real, same + 10) == 1.0
    assert G.knn_accuracy(real, real) == 0.0  # copies of the real cells: memorisation reads < 0.5
    # a collapsed generator (every cell at the mean) is recognised
    assert G.knn_accuracy(real, np.zeros_like(real)) > 0.95


def test_coverage_identical_one_collapsed_low():
    rng = np.random.default_rng(15)
    real = rng.normal(size=(400, 5))
    assert G.coverage(real, real) == 1.0
    assert G.coverage(real, np.zeros_like(real)) == pytest.approx(1 / 400)
    same = G.coverage(real, rng.normal(size=(400, 5)))
    narrow = G.coverage(real, 0.3 * rng.normal(size=(400, 5)))
    assert 0.3 < same < 0.9 and narrow < same


def test_classifier_two_sample_accuracy():
    rng = np.random.default_rng(16)
    real = rng.normal(size=(400, 6))
    assert M.classifier_two_sample_accuracy(real, rng.normal(size=(400, 6))) == pytest.approx(0.5, abs=0.06)
    assert M.classifier_two_sample_accuracy(real, rng.normal(size=(400, 6)) + 2) > 0.95
    # same mean, smaller spread: caught through the squared features
    assert M.classifier_two_sample_accuracy(real, 0.3 * rng.normal(size=(400, 6))) > 0.85
    assert np.isnan(M.classifier_two_sample_accuracy(real[:1], real[1:2]))


def test_two_sample_metrics_balances_sizes():
    rng = np.random.default_rng(17)
    real, gen = rng.normal(size=(300, 4)), rng.normal(size=(1000, 4))
    out = M.two_sample_metrics(real, gen, seed=0)
    assert out["n_cells"] == 300
    assert set(out) == {"sliced_wasserstein", "knn_accuracy", "coverage", "classifier_accuracy", "n_cells"}
    assert out["knn_accuracy"] == pytest.approx(0.5, abs=0.08)
    assert out["classifier_accuracy"] == pytest.approx(0.5, abs=0.08)
    assert M.two_sample_metrics(real, gen, seed=0) == out
    assert M.two_sample_metrics(real, gen, max_cells=100)["n_cells"] == 100
    ident = M.two_sample_metrics(real, real)
    assert ident["sliced_wasserstein"] == 0.0 and ident["coverage"] == 1.0


def test_kernel_ridge_tuned_recovers_a_nonlinear_map():
    from cosmic import metrics as M

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    y = np.c_[np.sin(2 * x[:, 0]), x[:, 1] ** 2] + 0.1 * rng.normal(size=(600, 2))
    fit = M.kernel_ridge_tuned(x[:400], y[:400], x[400:500], y[400:500], x[500:], statistic=M.mean_r2)
    assert fit["test"].shape == (100, 2) and fit["val_score"] > 0.8
    assert M.mean_r2(y[500:], fit["test"]) > 0.8
    assert M.mean_r2(y[500:], M.ridge_baseline(x[:400], y[:400], x[500:])) < 0.5


def test_matching_metrics_blockwise_equal_the_dense_computation():
    """FOSCTTM and retrieval in blocks of rows/columns (flat memory) give the dense n x n answer."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(257, 6))
    y = x + rng.normal(scale=0.8, size=x.shape)
    d = ((x[:, None] - y[None]) ** 2).sum(-1)
    diag = np.diag(d)
    by_row = (d < diag[:, None]).sum(1) + 0.5 * ((d == diag[:, None]).sum(1) - 1)
    by_col = (d < diag[None, :]).sum(0) + 0.5 * ((d == diag[None, :]).sum(0) - 1)
    dense_foscttm = (by_row.mean() + by_col.mean()) / 2 / (len(x) - 1)
    for block in (1, 7, 64, 1000):
        assert M.foscttm(x, y, block=block) == pytest.approx(dense_foscttm, abs=1e-12)
        assert M.topk_retrieval(x, y, 5, block=block) == pytest.approx((by_row < 5).mean(), abs=1e-12)
    # a constant prediction ties with everything: 0.5 in blocks too
    assert M.foscttm(np.zeros_like(x), y, block=10) == pytest.approx(0.5)
