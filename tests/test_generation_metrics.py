"""Generation metrics (cosmic.evaluation.generation) on toy cases with known answers."""

import numpy as np
import ot
import pytest

from cosmic import metrics as M
from cosmic.evaluation import generation as G


@pytest.fixture(scope="module")
def same_distribution():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2000, 5)), rng.normal(size=(2000, 5))


def _with_moments(z, mu, cov):
    """Rows whose sample mean is exactly ``mu`` and sample covariance (ddof=1) exactly ``cov``."""
    z = z - z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return mu + z @ np.linalg.cholesky(cov).T


# ---------------------------------------------------------------------------------------
def test_two_samples_of_one_distribution_look_alike(same_distribution):
    real, gen = same_distribution
    assert G.knn_accuracy(real, gen, k=1) == pytest.approx(0.5, abs=0.03)
    assert G.knn_accuracy(real, gen, k=100) == pytest.approx(0.5, abs=0.03)
    assert G.coherence_gap(real, gen) < 0.05
    assert G.frechet_distance(real, gen) < 0.05
    assert G.sliced_wasserstein(real, gen) < 0.1


def test_a_shifted_distribution_is_separated_and_swd_matches_pots_shift(same_distribution):
    real, gen = same_distribution
    far = gen + 10.0
    assert G.knn_accuracy(real, far, k=1) == 1.0 and G.knn_accuracy(real, far, k=100) == 1.0
    # a pure shift s: every 1-D projection is shifted by theta.s, so POT returns exactly
    # sqrt(mean_theta (theta.s)^2) for its projections, about |s| / sqrt(d) for many of them
    s = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    theta = ot.sliced.get_random_projections(5, 256, seed=4)
    exact = np.sqrt(np.mean((s @ theta) ** 2))
    assert G.sliced_wasserstein(real, real + s, n_projections=256, seed=4) == pytest.approx(exact, rel=1e-9)
    few = real[:100]  # the shift's value does not depend on the sample; many directions, few cells
    many = G.sliced_wasserstein(few, few + s, n_projections=10000, seed=1)
    assert many == pytest.approx(np.linalg.norm(s) / np.sqrt(5), rel=0.03)


def test_identical_sets_read_as_copies(same_distribution):
    real, _ = same_distribution
    assert G.knn_accuracy(real, real, k=1) == 0.0
    assert G.sliced_wasserstein(real, real) == 0.0
    assert G.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-8)
    assert G.coherence_gap(real, real) == pytest.approx(0.0, abs=1e-12)
    assert G.coverage(real, real) == 1.0


def test_swd_is_pots_estimator_with_the_same_seed(same_distribution):
    real, gen = same_distribution
    for seed in (0, 7):
        ref = ot.sliced_wasserstein_distance(real, 0.7 * gen[:1500] + 0.2, n_projections=64, seed=seed)
        assert G.sliced_wasserstein(real, 0.7 * gen[:1500] + 0.2, n_projections=64, seed=seed) == pytest.approx(ref, rel=1e-12)
    # and cosmic.metrics uses the same estimator
    assert M.sliced_wasserstein(real, gen, seed=3) == G.sliced_wasserstein(real, gen, seed=3)


def test_knn_accuracy_k1_equals_leave_one_out_1nn_accuracy():
    rng = np.random.default_rng(1)
    real, gen = rng.normal(size=(300, 4)), 1.2 * rng.normal(size=(250, 4)) + 0.3  # continuous: no ties
    pooled, is_real = np.vstack([real, gen]), np.r_[np.ones(len(real), bool), np.zeros(len(gen), bool)]
    dist = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    brute_force = (is_real[dist.argmin(1)] == is_real).mean()
    assert G.knn_accuracy(real, gen, k=1) == pytest.approx(brute_force, abs=1e-12)
    # k is capped at n - 1: every point sees all others, so purity = mean over points of (same - 1) / (n - 1)
    a, b = rng.normal(size=(3, 2)), rng.normal(size=(2, 2))
    assert G.knn_accuracy(a, b, k=100) == pytest.approx((3 * 2 / 4 + 2 * 1 / 4) / 5)


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(2)
    mu_r, mu_g = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    cov_r, cov_g = np.array([[2.0, 0.6], [0.6, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    real = _with_moments(rng.normal(size=(500, 2)), mu_r, cov_r)
    gen = _with_moments(rng.normal(size=(400, 2)), mu_g, cov_g)
    # for 2 x 2 matrices with positive eigenvalues, Tr(M^(1/2)) = sqrt(Tr M + 2 sqrt(det M))
    prod = cov_r @ cov_g
    tr_sqrt = np.sqrt(np.trace(prod) + 2 * np.sqrt(np.linalg.det(prod)))
    expected = np.sum((mu_r - mu_g) ** 2) + np.trace(cov_r) + np.trace(cov_g) - 2 * tr_sqrt
    assert G.frechet_distance(real, gen) == pytest.approx(expected, rel=1e-9)
    # diagonal covariances: |mu_r - mu_g|^2 + sum (sigma_r - sigma_g)^2
    real = _with_moments(rng.normal(size=(300, 3)), np.zeros(3), np.diag([1.0, 4.0, 9.0]))
    gen = _with_moments(rng.normal(size=(300, 3)), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert G.frechet_distance(real, gen) == pytest.approx(3 + 1 + 0 + 4, rel=1e-9)


def test_frechet_distance_survives_singular_covariances():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 4))
    collapsed = np.zeros((400, 4)) + 1.0  # zero covariance: distance = |mu|^2 + Tr(S_r)
    expected = np.sum((real.mean(0) - 1.0) ** 2) + np.trace(np.cov(real, rowvar=False))
    assert G.frechet_distance(real, collapsed) == pytest.approx(expected, rel=1e-4)
    flat = real.copy()
    flat[:, 3] = 0.0  # a constant feature in one set: finite, and about the variance it lost
    d = G.frechet_distance(real, flat)
    assert np.isfinite(d) and d == pytest.approx(np.var(real[:, 3], ddof=1), rel=0.05)


def test_coverage_known_configurations():
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)  # 100 real cells
    # equal sizes: 100 generated cells on (or right next to) the first 50 grid points -> half covered
    gen = np.vstack([grid[:50], grid[:50] + 0.1])
    assert G.coverage(grid, gen) == 0.5
    # the larger set is subsampled to the smaller: all generated cells sit on grid point 0
    assert G.coverage(grid, np.zeros((30, 2)), seed=5) == pytest.approx(1 / 30)
    # 10:1 with 100 real cells available for 1000 generated ones: no subsampling, 30 points covered
    jitter = np.random.default_rng(4).uniform(-0.3, 0.3, size=(1000, 2))
    gen = grid[np.arange(1000) % 30] + jitter
    assert G.coverage(grid, gen, real_per_generated=0.1) == 0.3
    # 10:1 with many real cells: real subsampled to a tenth of the generated count (here 100)
    assert G.coverage(np.random.default_rng(5).normal(size=(5000, 2)), np.full((1000, 2), 50.0),
                      real_per_generated=0.1) == pytest.approx(1 / 100)
    # 10:1 with too few real cells (100 for 2000 generated): generated subsampled to 1000 instead;
    # 200 generated cells next to each of the first 10 grid points -> all 10 still reached
    gen = grid[np.arange(2000) % 10] + np.random.default_rng(6).uniform(-0.3, 0.3, size=(2000, 2))
    assert G.coverage(grid, gen, real_per_generated=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="real_per_generated"):
        G.coverage(grid, gen, real_per_generated=0)


def test_coherence_gap_known_correlations():
    rng = np.random.default_rng(7)
    n = 20000
    z = rng.normal(size=(n, 2))
    real2 = np.c_[z[:, 0], 0.8 * z[:, 0] + 0.6 * z[:, 1]]  # correlation 0.8
    gen2 = rng.normal(size=(n, 2))  # independent
    assert G.coherence_gap(real2, gen2) == pytest.approx(0.8, abs=0.02)
    # 3 features, only one correlated pair: mean over the 3 pairs = 0.8 / 3
    real3, gen3 = np.c_[real2, rng.normal(size=n)], rng.normal(size=(n, 3))
    assert G.coherence_gap(real3, gen3) == pytest.approx(0.8 / 3, abs=0.02)
    # exact: equals mean |rho_r - rho_g| over off-diagonal pairs; a feature constant in one set is dropped
    gen3c = gen3.copy()
    gen3c[:, 2] = 1.0
    rr, rg = np.corrcoef(real3[:, :2], rowvar=False), np.corrcoef(gen3c[:, :2], rowvar=False)
    assert G.coherence_gap(real3, gen3c) == pytest.approx(abs(rr[0, 1] - rg[0, 1]), abs=1e-12)


def test_nan_rows_raise_naming_the_argument(same_distribution):
    real, gen = same_distribution
    bad = gen.copy()
    bad[5, 2] = np.nan
    for f in (G.sliced_wasserstein, G.knn_accuracy, G.coverage, G.frechet_distance, G.coherence_gap,
              G.generation_scores):
        with pytest.raises(ValueError, match="generated"):
            f(real, bad)
        with pytest.raises(ValueError, match="real"):
            f(bad, gen)
    with pytest.raises(ValueError, match="features"):
        G.knn_accuracy(real, gen[:, :3])


def test_generation_scores_protocol(same_distribution):
    real, gen = same_distribution
    out = G.generation_scores(real, gen[:1500], seed=0, max_cells=1000)
    assert tuple(out) == G.SCORE_KEYS
    assert set(out) == {"swd", "knna_k1", "knna_k100", "cov_equal", "cov_10to1", "frechet", "coherence_gap"}
    assert out["knna_k1"] == pytest.approx(0.5, abs=0.04) and out["knna_k100"] == pytest.approx(0.5, abs=0.04)
    assert out["cov_10to1"] > out["cov_equal"] > 0.4  # 10 generated cells per real cell reach nearly all
    assert G.generation_scores(real, gen[:1500], seed=0, max_cells=1000) == out  # seeded
    # no subsampling below max_cells: a copy of the real cells reads as a copy
    copy = G.generation_scores(real[:500], real[:500], max_cells=500)
    assert copy["knna_k1"] == 0.0 and copy["swd"] == 0.0 and copy["cov_equal"] == 1.0
    collapsed = G.generation_scores(real, np.zeros_like(real), max_cells=500)
    assert collapsed["knna_k1"] > 0.95 and collapsed["cov_equal"] < 0.01 and collapsed["frechet"] > 4


def test_moment_metrics_use_every_generated_cell(same_distribution):
    """Fréchet distance and coherence gap compare per-set statistics: the generated set is not cut down to
    the real set's size (that only adds noise), so with 4 draws per real cell they read the whole pool."""
    real, gen = same_distribution
    small_real, pool = real[:300], gen[:1200]
    out = G.generation_scores(small_real, pool, seed=0, max_cells=1000)
    assert out["coherence_gap"] == pytest.approx(G.coherence_gap(small_real, pool), abs=1e-12)
    assert out["frechet"] == pytest.approx(G.frechet_distance(small_real, pool), abs=1e-12)
    # the same draws, scored on a balanced subsample of the pool, scatter more around the truth (0)
    rng = np.random.default_rng(0)
    balanced = [G.coherence_gap(small_real, pool[rng.choice(len(pool), 300, replace=False)]) for _ in range(20)]
    assert out["coherence_gap"] < np.mean(balanced)
