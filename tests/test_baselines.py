"""Tests of cosmic.evaluation.baselines on synthetic problems with known answers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cosmic.evaluation import baselines as B
from cosmic.metrics import total_r2


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """One BLAS thread, as the evaluation stage runs them: on a shared, loaded machine threaded
    LAPACK calls on small matrices can stall for seconds, which would swamp the timing test."""
    with threadpool_limits(limits=1):
        yield


def _additive(n, noise, seed):
    """y = sin(2 x1) + x2² + x3 / 2 + noise; returns x, y and the noiseless truth."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 3))
    truth = np.sin(2 * x[:, :1]) + x[:, 1:2] ** 2 + 0.5 * x[:, 2:3]
    return x, truth + noise * rng.normal(size=truth.shape), truth


def _split(x, y, n_train=800, n_val=200):
    return x[:n_train], y[:n_train], x[n_train:n_train + n_val], y[n_train:n_train + n_val], \
        x[n_train + n_val:], y[n_train + n_val:]


@pytest.fixture(scope="module")
def additive():
    x, y, _ = _additive(1200, 0.3, seed=0)
    return _split(x, y)


def test_nonlinear_additive_link_ranks_the_baselines(additive):
    xtr, ytr, xva, yva, xte, yte = additive
    preds, k = B.predict_all(xtr, ytr, xva, yva, xte, return_k=True)
    assert set(preds) == set(B.PREDICTORS) == {"mean", "ridge", "spline_ridge", "knn"}
    r2 = {name: total_r2(yte, p) for name, p in preds.items()}
    assert all(p.shape == yte.shape for p in preds.values())
    assert r2["spline_ridge"] > r2["ridge"] + 0.3
    assert r2["spline_ridge"] > 0.85  # noise ceiling ≈ 0.93
    assert r2["knn"] > r2["mean"] + 0.5
    assert r2["ridge"] > r2["mean"] + 0.05
    assert abs(r2["mean"]) < 0.05
    assert k in B.KNN_GRID


def test_ridge_recovers_a_linear_link_up_to_the_noise_ceiling():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1200, 20)) * rng.uniform(0.1, 10, size=20)  # unequal scales
    truth = (x / x.std(0)) @ rng.normal(size=(20, 5))
    y = truth + rng.normal(size=truth.shape) * 2.0
    xtr, ytr, xva, yva, xte, yte = _split(x, y)
    ceiling = total_r2(yte, truth[1000:])
    assert ceiling == pytest.approx(total_r2(yte, B.ridge(xtr, ytr, xva, yva, xte)), abs=0.02)
    assert total_r2(yte, B.spline_ridge(xtr, ytr, xva, yva, xte)) > ceiling - 0.05


def _brute_force_k(xtr, ytr, xva, yva):
    sc = StandardScaler().fit(xtr)
    score = {k: total_r2(yva, KNeighborsRegressor(n_neighbors=min(k, len(xtr))).fit(sc.transform(xtr), ytr)
                         .predict(sc.transform(xva))) for k in B.KNN_GRID}
    return max(score, key=lambda k: (score[k], -k)), score


def test_knn_picks_the_validation_optimal_k_and_a_larger_k_under_more_noise():
    chosen = {}
    for noise in (0.05, 1.5):
        x, y, _ = _additive(2000, noise, seed=2)
        xtr, ytr, xva, yva, xte, _ = _split(x, y, n_train=800, n_val=1000)
        choice = B.knn_choice(xtr, ytr, xva, yva)
        best, score = _brute_force_k(xtr, ytr, xva, yva)
        assert choice.k == best
        assert choice.val_r2 == pytest.approx(score, abs=1e-10)
        pred, k = B.knn(xtr, ytr, xva, yva, xte, return_k=True)
        assert k == best
        sc = StandardScaler().fit(xtr)
        ref = KNeighborsRegressor(n_neighbors=k).fit(sc.transform(xtr), ytr).predict(sc.transform(xte))
        np.testing.assert_allclose(pred, ref, rtol=1e-12, atol=1e-12)
        chosen[noise] = k
    assert chosen[1.5] > chosen[0.05]


def test_knn_without_validation_cells_uses_k_15_capped_at_n_train():
    x, y, _ = _additive(40, 0.1, seed=3)
    assert B.knn(x, y, None, None, x[:3], return_k=True)[1] == 15
    assert B.knn(x[:10], y[:10], x[:0], y[:0], x[:3], return_k=True)[1] == 10
    assert set(B.knn_choice(x[:10], y[:10], x[10:], y[10:]).val_r2) == {5, 10}  # grid capped at n_train
    assert B.knn_choice(x, y, None, None).val_r2 == {}


def test_test_cells_enter_no_fit(additive):
    xtr, ytr, xva, yva, xte, _ = additive
    rng = np.random.default_rng(4)
    base = B.predict_all(xtr, ytr, xva, yva, xte)
    # row independence: changing the other test rows leaves row 0's prediction alone
    other = xte.copy()
    other[1:] = rng.normal(size=other[1:].shape) * 5
    # garbage rows appended to x_test do not change the predictions of the real ones
    garbage = np.vstack([xte, rng.normal(size=(50, 3)) * 100])
    for name, fn in B.PREDICTORS.items():
        np.testing.assert_allclose(fn(xtr, ytr, xva, yva, other)[0], base[name][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(fn(xtr, ytr, xva, yva, garbage)[:len(xte)], base[name], rtol=1e-12,
                                   atol=1e-12)
    for fn in B.GENERATORS.values():
        samples = fn(xtr, ytr, xte, 3, seed=1)
        np.testing.assert_allclose(fn(xtr, ytr, other, 3, seed=1)[:, 0], samples[:, 0], rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(fn(xtr, ytr, garbage, 3, seed=1)[:, :len(xte)], samples, rtol=1e-12,
                                   atol=1e-12)


def test_validation_targets_change_only_the_knn_choice(additive):
    xtr, ytr, xva, yva, xte, _ = additive
    base, k = B.predict_all(xtr, ytr, xva, yva, xte, return_k=True)
    flat = np.full_like(yva, ytr.mean())  # constant validation targets: the smoothest kNN wins
    new, k_new = B.predict_all(xtr, ytr, xva, flat, xte, return_k=True)
    for name in ("mean", "ridge", "spline_ridge"):
        np.testing.assert_array_equal(new[name], base[name])
    assert k < k_new == max(B.KNN_GRID)
    assert not np.allclose(new["knn"], base["knn"])
    for name in ("mean", "ridge", "spline_ridge"):  # validation inputs are not read either
        np.testing.assert_array_equal(B.PREDICTORS[name](xtr, ytr, None, None, xte), base[name])


def test_spline_ridge_reduces_many_inputs_to_32_principal_components():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(600, 4))
    x = z @ rng.normal(size=(4, 256)) + 0.05 * rng.normal(size=(600, 256))  # a 256-d embedding
    y = np.sin(z[:, :1]) + z[:, 1:2] ** 2 + 0.1 * rng.normal(size=(600, 1))
    model = B._fit_spline_ridge(x[:400], y[:400])
    assert model[-2].n_features_in_ == B.SPLINE_MAX_DIMS
    assert model[-1].n_features_in_ == B.SPLINE_MAX_DIMS * (B.SPLINE_KNOTS + B.SPLINE_DEGREE - 1)
    pred = B.spline_ridge(x[:400], y[:400], x[400:500], y[400:500], x[500:])
    assert total_r2(y[500:], pred) > total_r2(y[500:], B.ridge(x[:400], y[:400], None, None, x[500:]))


def _correlated(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    noise = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=n)
    return x, 0.3 * x[:, :2] + noise


def test_ridge_residual_samples_centre_on_ridge_and_keep_output_correlation():
    x, y = _correlated(1100, seed=7)
    xtr, ytr, xte = x[:1000], y[:1000], x[1000:]
    samples = B.ridge_residual_samples(xtr, ytr, xte, n_samples=400, seed=3)
    assert samples.shape == (400, 100, 2)
    ridge = B.ridge(xtr, ytr, None, None, xte)
    np.testing.assert_allclose(samples.mean(0), ridge, atol=0.2)
    assert np.abs(samples.mean(0) - ridge).mean() < 0.06
    real = np.corrcoef(ytr.T)[0, 1]
    resid = (samples - ridge[None]).reshape(-1, 2)
    fitted = B.ridge(xtr, ytr, None, None, xtr)
    assert np.corrcoef(resid.T)[0, 1] == pytest.approx(np.corrcoef((ytr - fitted).T)[0, 1], abs=0.03)
    assert np.corrcoef(samples.reshape(-1, 2).T)[0, 1] == pytest.approx(real, abs=0.05)
    assert resid.std(0) == pytest.approx(np.sqrt(1.0), rel=0.1)  # the noise scale, not shrunk
    np.testing.assert_array_equal(samples, B.ridge_residual_samples(xtr, ytr, xte, n_samples=400, seed=3))
    assert not np.array_equal(samples, B.ridge_residual_samples(xtr, ytr, xte, n_samples=400, seed=4))


def test_nearest_rna_retrieves_training_cells_in_neighbour_order():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 6)) * rng.uniform(0.5, 20, size=6)
    y = rng.normal(size=(300, 9))
    rows = np.array([3, 50, 299, 120])
    samples, idx = B.nearest_rna_samples(x, y, x[rows], n_samples=5)
    assert samples.shape == (5, 4, 9) and idx.shape == (5, 4)
    np.testing.assert_array_equal(idx[0], rows)
    np.testing.assert_array_equal(samples[0], y[rows])
    np.testing.assert_array_equal(samples, y[idx])
    xs = StandardScaler().fit_transform(x)
    order = np.argsort(((xs[rows, None, :] - xs[None]) ** 2).sum(-1), axis=1)[:, :5]
    np.testing.assert_array_equal(idx, order.T)  # sample j is the (j+1)-th neighbour
    np.testing.assert_array_equal(B.GENERATORS["nearest_rna"](x, y, x[rows], 5), samples)
    with pytest.raises(ValueError, match="n_samples"):
        B.nearest_rna_samples(x, y, x[rows], n_samples=301)


def test_thousand_outputs_run_fast():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(1200, 64))
    y = x[:, :8] @ rng.normal(size=(8, 1000)) + rng.normal(size=(1200, 1000))
    xtr, ytr, xva, yva, xte, _ = _split(x, y)
    B.predict_all(xtr[:50], ytr[:50, :5], xva[:10], yva[:10, :5], xte[:5])  # warm imports
    start = time.perf_counter()
    preds = B.predict_all(xtr, ytr, xva, yva, xte)
    gens = {name: fn(xtr, ytr, xte, 10, seed=0) for name, fn in B.GENERATORS.items()}
    elapsed = time.perf_counter() - start
    assert all(p.shape == (200, 1000) for p in preds.values())
    assert all(s.shape == (10, 200, 1000) for s in gens.values())
    assert elapsed < 2.0, f"baselines on 1,000 outputs took {elapsed:.2f} s"


@pytest.mark.parametrize("arg", ["x_train", "y_train", "x_val", "y_val", "x_test"])
def test_nan_inputs_raise_naming_the_argument(additive, arg):
    args = dict(zip(["x_train", "y_train", "x_val", "y_val", "x_test"], [a.copy() for a in additive[:5]]))
    args[arg][0, 0] = np.nan
    for fn in B.PREDICTORS.values():
        with pytest.raises(ValueError, match=arg):
            fn(*args.values())
    if arg not in ("x_val", "y_val"):
        for fn in B.GENERATORS.values():
            with pytest.raises(ValueError, match=arg):
                fn(args["x_train"], args["y_train"], args["x_test"], 2)


def test_shapes_and_one_dimensional_targets(additive):
    xtr, ytr, xva, yva, xte, _ = additive
    for fn in B.PREDICTORS.values():
        assert fn(xtr, ytr[:, 0], xva, yva[:, 0], xte).shape == (len(xte), 1)
        assert fn(xtr, ytr, xva, yva, xte[:0]).shape == (0, 1)
    with pytest.raises(ValueError, match="x_test has 2 columns"):
        B.ridge(xtr, ytr, xva, yva, xte[:, :2])
    with pytest.raises(ValueError, match="y_train has"):
        B.mean(xtr, ytr[:-1], xva, yva, xte)
