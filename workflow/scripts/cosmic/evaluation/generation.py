"""How realistic and coherent generated cells are: two-sample metrics of real against generated cells.

Every function takes two ``cells x features`` arrays (``real``, ``generated``) that are already in a
comparable space (e.g. region properties standardised on the training cells); row order is
ignored. Rows with NaN (or infinite values) raise ValueError naming the argument. The protocols
follow the published COSMIC evaluation (POT's sliced Wasserstein, k-NN accuracy as neighbourhood
purity, coverage with equal sizes and with 10 generated cells per real cell).

Which direction is better:

- ``sliced_wasserstein``: lower (0 = same distribution);
- ``knn_accuracy``: 0.5 (indistinguishable); 1 = separated; < 0.5 = generated cells copy real ones;
- ``coverage``: higher (1 = every real cell is reached); compare with a real-vs-real reference;
- ``frechet_distance``: lower (0 = same mean and covariance);
- ``coherence_gap``: lower (0 = same feature-feature correlations).
"""

from __future__ import annotations

import warnings

import numpy as np

SCORE_KEYS = ("swd", "knna_k1", "knna_k100", "cov_equal", "cov_10to1", "frechet", "coherence_gap")


def _check(a, name: str) -> np.ndarray:
    """``a`` as a float64 ``cells x features`` array (1-D = one feature); ValueError on NaN/inf rows."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D cells x features array, got shape {a.shape}")
    bad = ~np.isfinite(a).all(1)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} row(s) with NaN or infinite values "
                         f"(first: row {int(np.flatnonzero(bad)[0])}); drop or impute them first")
    return a


def _pair(real, generated) -> tuple[np.ndarray, np.ndarray]:
    a, b = _check(real, "real"), _check(generated, "generated")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"real and generated have different numbers of features: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def _subsample(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` rows of ``a``, drawn without replacement (kept in their original order)."""
    from ..splits import subset_indices

    return a if len(a) <= max(0, int(n)) else a[subset_indices(len(a), n, rng)]


# ---------------------------------------------------------------------------------------
def sliced_wasserstein(real, generated, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between real and generated cells. Lower is better (0 = same).

    This is POT's estimator, ``ot.sliced_wasserstein_distance`` (the published COSMIC evaluation
    uses POT): ``n_projections`` random directions uniform on the unit sphere (seeded with ``seed``,
    through POT's own random state, leaving NumPy's global one alone), on each the exact 1-D W2
    distance between the projected samples (uniform weights, any two sizes), and
    ``sqrt(mean over directions of W2²)``. A pure shift by a vector ``s`` gives ``|s| / sqrt(d)``
    in expectation over directions. NaN if either set is empty.
    """
    import ot

    a, b = _pair(real, generated)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=int(n_projections), p=2, seed=int(seed)))


def knn_accuracy(real, generated, k: int = 1) -> float:
    """k-NN accuracy (k-NNA) as neighbourhood purity, the protocol of the published COSMIC evaluation.

    Both sets are pooled and labelled real/generated; for every pooled point its ``k`` nearest
    neighbours (Euclidean, the point itself excluded; ``k`` capped at ``n - 1``) are found and the
    fraction with the same label taken; the result is the mean over all points. Best is 0.5
    (indistinguishable, for equal set sizes); 1 = the sets are separated; well below 0.5 = the
    generated cells copy real ones (an exact copy of the real set scores 0 at ``k = 1``). At
    ``k = 1`` this is the leave-one-out 1-NN two-sample accuracy (ties between equidistant
    neighbours are broken by the search: one neighbour is chosen).
    ``sklearn.neighbors.NearestNeighbors`` (memory O(n·k)). NaN if a set is empty or fewer than 3
    cells are pooled.
    """
    from sklearn.neighbors import NearestNeighbors

    a, b = _pair(real, generated)
    if len(a) == 0 or len(b) == 0 or len(a) + len(b) < 3:
        return float("nan")
    z = np.vstack([a, b])
    lab = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
    k = int(min(max(1, int(k)), len(z) - 1))
    # with X=None scikit-learn excludes each query point itself (or one of its exact duplicates)
    idx = NearestNeighbors(n_neighbors=k).fit(z).kneighbors(return_distance=False)
    return float((lab[idx] == lab[:, None]).mean())


def _coverage_sizes(n_real: int, n_gen: int, real_per_generated: float) -> tuple[int, int]:
    """(real, generated) set sizes with real ≈ ``real_per_generated`` x generated, within the data."""
    if real_per_generated * n_gen <= n_real:
        return max(1, int(round(real_per_generated * n_gen))), n_gen
    return n_real, min(n_gen, max(1, int(round(n_real / real_per_generated))))


def coverage(real, generated, real_per_generated: float = 1.0, seed: int = 0) -> float:
    """COV: the fraction of the real cells that are the nearest real neighbour of at least one generated cell.

    Higher is better (1 = every real cell is reached by some generated cell); a collapsed generator
    (e.g. a conditional mean) reaches few real cells. Even a perfect generator stays below 1, and
    the value depends on the ratio of the set sizes, so read it beside a real-vs-real reference at
    the same ratio. The sizes are fixed by ``real_per_generated`` (real cells per generated cell):

    - ``1.0`` (default): equal sizes; the larger set is subsampled (seeded) to the smaller one;
    - ``0.1``: the reference's 10:1 protocol; all generated cells against real cells subsampled to
      one tenth of the generated count. If there are too few real cells for that, all real cells
      are kept and the *generated* set is subsampled instead (to ``n_real / 0.1`` cells), so the
      ratio holds.

    Subsampling is without replacement with ``numpy.random.default_rng(seed)``. Nearest neighbours
    are Euclidean (``sklearn.neighbors.NearestNeighbors``; among exactly equidistant real cells the
    search picks one). NaN if either set is empty.
    """
    from sklearn.neighbors import NearestNeighbors

    a, b = _pair(real, generated)
    if not real_per_generated > 0:
        raise ValueError(f"real_per_generated must be positive, got {real_per_generated!r}")
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    n_real, n_gen = _coverage_sizes(len(a), len(b), float(real_per_generated))
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, n_real, rng), _subsample(b, n_gen, rng)
    nearest = NearestNeighbors(n_neighbors=1).fit(a).kneighbors(b, return_distance=False)[:, 0]
    return float(len(np.unique(nearest)) / len(a))


def frechet_distance(real, generated, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to real and generated cells (FID-style, in the given space).

    ``|mu_r - mu_g|² + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` with sample means and covariances
    (``ddof = 1``). Lower is better; 0 = same mean and covariance. The matrix square root is
    ``scipy.linalg.sqrtm``; when it is not finite or inaccurate (singular covariances, e.g. a
    collapsed generator or constant features) ``eps`` times the identity is added to both
    covariances and it is recomputed (the usual FID fix); the real part is kept and the result
    clipped at 0 (rounding can make it slightly negative). NaN with fewer than 2 cells in a set.
    """
    from scipy import linalg

    a, b = _pair(real, generated)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu_r, mu_g = a.mean(0), b.mean(0)
    s_r = np.atleast_2d(np.cov(a, rowvar=False))
    s_g = np.atleast_2d(np.cov(b, rowvar=False))
    prod = s_r @ s_g
    with warnings.catch_warnings():  # a singular product is expected here and handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(prod)
        scale = max(float(np.abs(prod).max()), 1e-300)
        if not np.isfinite(covmean).all() or np.abs(covmean @ covmean - prod).max() > 1e-6 * scale:
            off = eps * np.eye(len(s_r))
            covmean = linalg.sqrtm((s_r + off) @ (s_g + off))
    covmean = np.real(covmean)
    d = float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r) + np.trace(s_g) - 2.0 * np.trace(covmean))
    return max(d, 0.0)


def _corr(a: np.ndarray) -> np.ndarray:
    c = a - a.mean(0)
    c = c / np.sqrt((c ** 2).sum(0))
    return np.clip(c.T @ c, -1.0, 1.0)


def coherence_gap(real, generated) -> float:
    """Mean absolute difference between the feature-feature Pearson correlations of real and generated cells.

    ``mean over feature pairs i < j of |rho_real[i, j] - rho_gen[i, j]|``: does the generator
    reproduce how features co-vary within a cell? Lower is better; 0 for two samples of one
    distribution in the limit (finite samples give a small positive value, of order
    ``1 / sqrt(cells)``). Features constant in either set (no correlation defined) are dropped.
    NaN with fewer than 2 remaining features or fewer than 3 cells in a set.
    """
    a, b = _pair(real, generated)
    if len(a) < 3 or len(b) < 3:
        return float("nan")

    def varies(x):
        sd = x.std(0)
        return sd > 1e-12 * np.maximum(np.abs(x).max(0), 1e-300)

    keep = varies(a) & varies(b)
    if keep.sum() < 2:
        return float("nan")
    r_r, r_g = _corr(a[:, keep]), _corr(b[:, keep])
    iu = np.triu_indices(int(keep.sum()), k=1)
    return float(np.abs(r_r[iu] - r_g[iu]).mean())


def generation_scores(real, generated, seed: int = 0, max_cells: int = 2000) -> dict:
    """All generation metrics of ``generated`` against ``real``, with the published protocols.

    Returns ``{"swd", "knna_k1", "knna_k100", "cov_equal", "cov_10to1", "frechet", "coherence_gap"}``.
    ``swd``, ``knna_k1``, ``knna_k100`` and ``cov_equal`` are computed on equal-size subsamples
    (seeded, without replacement) of at most ``max_cells`` cells each, so that k-NNA reads 0.5 for
    indistinguishable sets; ``cov_10to1`` uses all generated cells (at most ``10 x max_cells``)
    against real cells subsampled to one tenth of that (:func:`coverage` with
    ``real_per_generated=0.1``). ``frechet`` and ``coherence_gap`` compare statistics estimated from
    each set on its own (means, covariances, correlations), which need no balance: they use at most
    ``max_cells`` real and ``10 x max_cells`` generated cells, since cutting the generated set down to
    the real one's size only adds noise (on peco's 178 test cells two real samples of 178 cells differ by
    a coherence gap of 0.080 +- 0.031, a sample of 178 and one of 712 by 0.062 +- 0.025). Better: swd,
    frechet, coherence_gap lower; knna 0.5; coverage higher (beside a real-vs-real reference).
    """
    a, b = _pair(real, generated)
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), int(max_cells))
    ae, be = _subsample(a, n, rng), _subsample(b, n, rng)
    bg = _subsample(b, 10 * int(max_cells), rng)
    ar = _subsample(a, int(max_cells), rng)  # drawn last: the other metrics' subsamples stay as they were
    return {
        "swd": sliced_wasserstein(ae, be, seed=seed),
        "knna_k1": knn_accuracy(ae, be, k=1),
        "knna_k100": knn_accuracy(ae, be, k=100),
        "cov_equal": coverage(ae, be, real_per_generated=1.0, seed=seed),
        "cov_10to1": coverage(a, bg, real_per_generated=0.1, seed=seed),
        "frechet": frechet_distance(ar, bg),
        "coherence_gap": coherence_gap(ar, bg),
    }
