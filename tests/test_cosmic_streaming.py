"""The cosmic stage at cohort scale: expression read gene-restricted from disk, kept sparse in training,
baselines fitted on the sparse matrix; each equal to the dense computation on small inputs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.preprocessing import StandardScaler

from cosmic import metrics as M
from cosmic.crossmodal.cohort import read_cohort_for_genes
from cosmic.crossmodal.preprocess import Preprocessor, rna_pca
from cosmic.crossmodal.rows import SparseRows, row_chunks, take
from cosmic.splits import make_splits


def _sparse_targets(n=400, d=5, g=80, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.maximum(0, x @ rng.normal(size=(d, g)) * 0.5 + rng.normal(size=(n, g)) - 0.8)
    return x, y, rng.normal(size=(60, d))


@pytest.mark.parametrize("signal", [0.01, 1.0, 10.0])
def test_sparse_target_ridge_equals_ridgecv(signal):
    rng = np.random.default_rng(1)
    x, _, x_test = _sparse_targets()
    y = np.maximum(0, x @ rng.normal(size=(5, 80)) * signal + rng.normal(size=(400, 80)))
    sc = StandardScaler().fit(x)
    expected = RidgeCV(alphas=M.RIDGE_ALPHAS).fit(sc.transform(x), y).predict(sc.transform(x_test))
    np.testing.assert_allclose(M.ridge_baseline(x, sp.csr_matrix(y), x_test), expected, rtol=1e-8, atol=1e-10)


def test_sparse_knn_and_mean_baselines_equal_the_dense_ones():
    x, y, x_test = _sparse_targets()
    sc = StandardScaler().fit(x)
    expected = KNeighborsRegressor(n_neighbors=7).fit(sc.transform(x), y).predict(sc.transform(x_test))
    np.testing.assert_allclose(M.knn_baseline(x, sp.csr_matrix(y), x_test, k=7), expected, atol=1e-12)
    np.testing.assert_allclose(M.mean_baseline(sp.csr_matrix(y), 3), np.repeat(y.mean(0, keepdims=True), 3, 0))


def test_sparse_rna_pca_matches_the_dense_svd(monkeypatch):
    from cosmic.crossmodal import preprocess

    _, y, _ = _sparse_targets(n=300, g=50)
    dense_mean, dense_components, dense_s = rna_pca(y, 6)
    monkeypatch.setattr(preprocess, "DENSE_PCA_BUDGET", 0)  # force the sparse (ARPACK) route
    mean, components, s = rna_pca(sp.csr_matrix(y), 6, seed=0)
    np.testing.assert_allclose(mean, dense_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, dense_s, rtol=1e-4)
    np.testing.assert_allclose(np.abs(components), np.abs(dense_components), atol=1e-4)


def test_sparse_rows_index_like_the_dense_tensor():
    _, y, _ = _sparse_targets(n=50, g=30)
    rows = SparseRows(sp.csr_matrix(y))
    dense = torch.as_tensor(y, dtype=torch.float32)
    idx = torch.tensor([4, 0, 49, 4])
    torch.testing.assert_close(rows[idx], dense[idx])
    torch.testing.assert_close(rows[3:9], dense[3:9])
    data = {"expr": rows, "rep": torch.zeros(50, 2)}
    chunks = row_chunks(data, values=300)  # 10 cells of 30 genes
    assert len(chunks) == 5 and torch.equal(torch.cat([take(data, c)["expr"] for c in chunks]), dense)
    np.testing.assert_allclose(rows.column_variances(), y.var(0), rtol=1e-5, atol=1e-7)


def _cohort_file(path, n_cells=240, n_genes=300, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.4, 1.0, n_genes), (n_cells, n_genes)).astype(np.float32)
    obs = pd.DataFrame({"sample": rng.choice(["s1", "s2"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=sp.csr_matrix(np.log1p(counts)), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.obsm["X_morph"] = rng.normal(size=(n_cells, 5)).astype(np.float32)
    adata.write_h5ad(path)
    return adata


@pytest.mark.parametrize("n_hvg", [0, 40])
def test_gene_restricted_cohort_gives_the_same_preprocessing(tmp_path, n_hvg):
    full = _cohort_file(tmp_path / "cohort.h5ad")

    def split_of(obs):
        return make_splits(obs, (0.7, 0.15, 0.15), 0, "sample", [])

    restricted, split = read_cohort_for_genes(tmp_path / "cohort.h5ad", split_of, n_hvg, progress=False)
    assert restricted.shape == full.shape and not restricted.layers
    assert restricted.X.nnz <= full.X.nnz
    train = (split == "train").to_numpy()
    expected = Preprocessor(n_hvg, 5).fit(full[train])
    got = Preprocessor(n_hvg, 5).fit(restricted[train])
    np.testing.assert_array_equal(got.state["gene_index"], expected.state["gene_index"])
    genes = expected.state["gene_index"]
    assert (restricted.X[:, genes] != full.X[:, genes]).nnz == 0
    np.testing.assert_allclose(got.transform(restricted)["rna"], expected.transform(full)["rna"], rtol=1e-4, atol=1e-4)


def test_residual_bases_from_a_subset_of_cells_keep_the_leading_directions():
    from cosmic.crossmodal.diffusion import ResidualDiffusion

    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(3, 40))
    residuals = torch.as_tensor(rng.normal(size=(5000, 3)) * [3, 2, 1] @ loadings + rng.normal(size=(5000, 40)) * 0.1,
                                dtype=torch.float32)
    whole = ResidualDiffusion(40, 2, 3, hidden=8, n_layers=1, n_steps=4)
    whole.fit_basis(residuals)
    subset = ResidualDiffusion(40, 2, 3, hidden=8, n_layers=1, n_steps=4)
    subset.fit_basis(residuals[:800], residuals.mean(0), residuals.var(0, unbiased=False))
    subset.refit_spread(residuals[i:i + 700] for i in range(0, 5000, 700))
    overlap = torch.linalg.svdvals(whole.basis @ subset.basis.T)
    assert overlap.min() > 0.99  # the same leading subspace
    torch.testing.assert_close(subset.score_scale, whole.score_scale, rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(subset.leftover_sd, whole.leftover_sd, rtol=0.02, atol=1e-3)
    torch.testing.assert_close(subset.score_limit, whole.score_limit, rtol=1e-2, atol=1e-3)
    # with every cell in the subset, the pass over all cells changes nothing (up to the float32
    # cancellation of fit_basis' total-minus-explained variance)
    again = ResidualDiffusion(40, 2, 3, hidden=8, n_layers=1, n_steps=4)
    again.fit_basis(residuals)
    again.refit_spread([residuals])
    torch.testing.assert_close(again.leftover_sd, whole.leftover_sd, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(again.score_scale, whole.score_scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("statistic", [M.total_r2, M.mean_r2])
def test_bootstrap_of_r2_by_weights_equals_resampling_the_cells(statistic):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 25))
    y[:, 4] = 2.0  # a constant feature stays undefined (NaN) in every resample
    pred = 0.5 * y + rng.normal(size=y.shape)
    draws = [np.random.default_rng(5).integers(0, 300, 300)]
    draws += [np.random.default_rng(i).integers(0, 300, 300) for i in range(20)]
    expected = [statistic(y[d], pred[d]) for d in draws]
    np.testing.assert_allclose(M._resampled_r2(y, pred, draws, statistic is M.total_r2), expected, rtol=1e-10)
    ci = M.bootstrap_ci(y, pred, statistic, n_boot=40, seed=1)
    assert ci["ci_low"] < ci["value"] < ci["ci_high"]


def test_masked_pearson_of_many_features_is_computed_a_block_at_a_time_with_the_same_values():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2100, 2100)).astype(np.float32)  # above the one-block size (2^22 values)
    pred = 0.3 * y + rng.normal(size=y.shape).astype(np.float32)
    detected = rng.random(y.shape) < 0.5
    y[:, 7] = 1.0  # constant: NaN
    whole = M.masked_pearson_per_feature(y, pred, detected)
    by_column = np.array([M.masked_pearson_per_feature(y[:, [j]], pred[:, [j]], detected[:, [j]])[0]
                          for j in (0, 7, 1000, 2099)])
    np.testing.assert_allclose(whole[[0, 7, 1000, 2099]], by_column, rtol=1e-10, equal_nan=True)
    assert whole.shape == (2100,) and np.isnan(whole[7])
