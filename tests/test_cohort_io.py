"""Streamed h5ad reading and writing (cosmic.cohort_io): the pair and cohort stages copy expression a
chunk of cells at a time and give the same files as the in-memory route."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cosmic import pairing
from cosmic.cohort_io import read_cohort, write_streamed


def _sample(name: str, n_cells: int, genes: list[str], seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = sp.random(n_cells, len(genes), density=0.3, format="csr", random_state=seed, dtype=np.float32)
    counts.data = np.ceil(counts.data * 20).astype(np.float32)
    obs = pd.DataFrame({"sample": name, "barcode": [f"{name}_{i}" for i in range(n_cells)]},
                       index=[f"{name}_{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=genes))
    adata.X.data = np.log1p(adata.X.data)
    adata.layers["counts"] = counts
    adata.obsm["X_morph"] = rng.normal(size=(n_cells, 4)).astype(np.float32)
    adata.obsm["X_rna"] = rng.normal(size=(n_cells, 3)).astype(np.float32)
    adata.uns["morph_features"] = ["area", "perimeter", "dna", "ecc"]
    adata.uns["rna_embedding"] = "pca"
    return adata


@pytest.fixture
def paired_files(tmp_path):
    genes = [f"g{i}" for i in range(60)]
    paths = []
    for i, (name, n) in enumerate((("a", 70), ("b", 45))):
        path = tmp_path / f"{name}.h5ad"
        _sample(name, n, genes, i).write_h5ad(path)
        paths.append(path)
    return paths


def test_cohort_from_files_equals_the_in_memory_cohort(paired_files, tmp_path):
    out = tmp_path / "cohort.h5ad"
    pairing.build_cohort_from_files(paired_files, out, n_pcs=3, seed=0)
    streamed = ad.read_h5ad(out)
    expected = pairing.build_cohort([ad.read_h5ad(p) for p in paired_files], n_pcs=3, seed=0)
    assert list(streamed.obs_names) == list(expected.obs_names)
    assert (streamed.X != expected.X).nnz == 0
    assert (streamed.layers["counts"] != expected.layers["counts"]).nnz == 0
    np.testing.assert_allclose(np.abs(streamed.obsm["X_pca"]), np.abs(expected.obsm["X_pca"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(streamed.var["highly_variable"], expected.var["highly_variable"])
    np.testing.assert_array_equal(streamed.obsm["X_morph"], expected.obsm["X_morph"])
    assert list(streamed.uns["morph_features"]) == list(expected.uns["morph_features"])


def test_write_streamed_copies_chosen_rows_in_order_in_small_chunks(paired_files, tmp_path):
    source = ad.read_h5ad(paired_files[0])
    rows = np.array([5, 0, 69, 12, 12 + 1, 40, 3])
    shell = read_cohort(paired_files[0], x=False)[rows].copy()
    out = tmp_path / "rows.h5ad"
    write_streamed(shell, out, [(paired_files[0], rows)], values=50)  # a few cells per chunk
    written = ad.read_h5ad(out)
    assert (written.X != source.X[rows]).nnz == 0
    assert (written.layers["counts"] != source.layers["counts"][rows]).nnz == 0
    assert list(written.obs_names) == list(source.obs_names[rows])


def test_read_cohort_leaves_layers_on_disk(paired_files):
    cohort = read_cohort(paired_files[0])
    assert not cohort.layers and cohort.n_obs == 70 and "X_morph" in cohort.obsm
    assert read_cohort(paired_files[0], x=False).X.nnz == 0


def test_cohort_embedding_fitted_on_a_subset_projects_every_cell(paired_files, tmp_path):
    import scanpy as sc

    out = tmp_path / "cohort.h5ad"
    pairing.build_cohort_from_files(paired_files, out, n_pcs=3, seed=0, max_fit_cells=60)
    cohort = ad.read_h5ad(out)
    rows = pairing.embedding_fit_rows(cohort.obs["sample"], 60, seed=0)
    assert cohort.uns["pca"]["fit_cells"] == len(rows) < cohort.n_obs
    assert set(cohort.obs["sample"].iloc[rows]) == {"a", "b"}  # every sample is in the fit
    fit = ad.AnnData(X=cohort.X[rows].copy(), obs=cohort.obs.iloc[rows].copy(), var=pd.DataFrame(index=cohort.var_names))
    sc.pp.highly_variable_genes(fit, n_top_genes=min(2000, fit.n_vars), batch_key="sample")
    sc.pp.pca(fit, n_comps=3, mask_var="highly_variable", random_state=0)
    np.testing.assert_array_equal(cohort.var["highly_variable"], fit.var["highly_variable"])
    # the fit cells' projection is scanpy's PCA of the subset; the other cells are projected the same way
    np.testing.assert_allclose(cohort.obsm["X_pca"][rows], fit.obsm["X_pca"], rtol=1e-4, atol=1e-5)
    hvg = fit.var["highly_variable"].to_numpy()
    rest = np.setdiff1d(np.arange(cohort.n_obs), rows)
    centred = cohort.X[rest][:, hvg].toarray() - np.asarray(fit.X[:, hvg].mean(0))
    np.testing.assert_allclose(cohort.obsm["X_pca"][rest], centred @ fit.varm["PCs"][hvg], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cohort.obsm["X_rna"], cohort.obsm["X_pca"])
    assert (cohort.X != sp.vstack([ad.read_h5ad(p).X for p in paired_files])).nnz == 0


def test_embedding_fit_rows_keep_each_samples_share():
    sample = np.array(["a"] * 9000 + ["b"] * 1000)
    rows = pairing.embedding_fit_rows(sample, 1000, seed=3)
    assert np.all(np.diff(rows) > 0)
    assert (sample[rows] == "a").sum() == 900 and (sample[rows] == "b").sum() == 100
    np.testing.assert_array_equal(rows, pairing.embedding_fit_rows(sample, 1000, seed=3))
    assert len(pairing.embedding_fit_rows(sample, 0, seed=3)) == 10000
