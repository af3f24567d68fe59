"""The cross-modal preprocessor fits on a sparse expression matrix as on its dense copy, without
densifying every gene (only the kept ones)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cosmic.crossmodal.preprocess import Preprocessor, gene_variances


def _cells(n_cells=300, n_genes=400, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.5, 1.0, n_genes), (n_cells, n_genes)).astype(np.float32)
    counts[:, 3] = 0  # never detected
    x = np.log1p(counts)
    obs = pd.DataFrame({"sample": rng.choice(["a", "b"], n_cells)}, index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=obs)
    adata.obsm["X_morph"] = rng.normal(size=(n_cells, 6)).astype(np.float32)
    return adata


def test_gene_variances_of_a_sparse_matrix_equal_numpys():
    adata = _cells()
    dense = adata.X.toarray()
    np.testing.assert_allclose(gene_variances(adata.X), dense.astype(np.float64).var(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gene_variances(dense), dense.var(0), rtol=1e-6)
    assert gene_variances(adata.X)[3] == 0


@pytest.mark.parametrize("n_hvg", [0, 50])
def test_fit_on_sparse_equals_fit_on_dense(n_hvg):
    sparse_cells = _cells()
    dense_cells = sparse_cells.copy()
    dense_cells.X = sparse_cells.X.toarray()
    a = Preprocessor(n_hvg, 5, "morph", ["sample"]).fit(sparse_cells).state
    b = Preprocessor(n_hvg, 5, "morph", ["sample"]).fit(dense_cells).state
    np.testing.assert_array_equal(a["gene_index"], b["gene_index"])
    variable = int((dense_cells.X.var(0) > 0).sum())
    assert 3 not in a["gene_index"] and len(a["gene_index"]) == (variable if n_hvg == 0 else n_hvg)
    np.testing.assert_allclose(a["gene_mean"], b["gene_mean"], rtol=1e-5)
    # principal axes are defined up to sign
    np.testing.assert_allclose(np.abs(a["components"]), np.abs(b["components"]), atol=1e-4)
