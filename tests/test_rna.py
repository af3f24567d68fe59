"""Tests of the RNA stage (cosmic.rna): readers, validation, QC, HVG/PCA, embeddings, output."""

from __future__ import annotations

import gzip
import re
import shutil

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from cosmic import demo, rna
from cosmic.errors import CosmicInputError

N_CELLS, N_GENES = 60, 120
MITO = ["MT-ND1", "MT-CO1", "MT-CYB"]
# Real symbols (Tirosh cell-cycle genes) so csv orientation can be auto-detected.
CC_GENES = ["MCM5", "PCNA", "TYMS", "CDK1", "NUSAP1", "HMGB2", "TOP2A", "MKI67"]


def make_counts(seed=0, n_cells=N_CELLS, n_genes=N_GENES):
    """Counts (cells x genes), barcodes, genes table (gene, gene_id)."""
    rng = np.random.default_rng(seed)
    genes = CC_GENES + MITO + [f"GENE{i}" for i in range(n_genes - len(CC_GENES) - len(MITO))]
    # two cell groups with different programs, so HVGs and PCs have structure
    base = rng.gamma(1.0, 1.0, size=(2, n_genes)) * 3
    group = rng.integers(0, 2, n_cells)
    lam = base[group] * rng.lognormal(0, 0.2, (n_cells, 1)) * 3
    counts = rng.poisson(lam).astype(np.int64)
    counts[:, [genes.index(m) for m in MITO]] = rng.poisson(2, (n_cells, len(MITO)))
    barcodes = demo.random_barcodes(rng, n_cells)
    gene_df = pd.DataFrame({"gene": genes, "gene_id": [f"ENSG{i:011d}" for i in range(n_genes)]})
    return counts, barcodes, gene_df


def write_10x_h5(path, counts, barcodes, gene_df):
    """A Cell Ranger v3 filtered_feature_bc_matrix.h5 (genes x cells CSC, stored as CSR of cells)."""
    m = sp.csc_matrix(counts.T)  # genes x cells; 10x stores CSC with indptr over cells
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        ft = g.create_group("features")
        ft.create_dataset("id", data=np.array(gene_df["gene_id"], dtype="S"))
        ft.create_dataset("name", data=np.array(gene_df["gene"], dtype="S"))
        ft.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(gene_df), dtype="S"))
        ft.create_dataset("genome", data=np.array(["GRCh38"] * len(gene_df), dtype="S"))
        ft.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


def write_csv(path, counts, barcodes, genes, orientation="cells_x_genes", sep=","):
    df = pd.DataFrame(counts, index=barcodes, columns=genes)
    if orientation == "genes_x_cells":
        df = df.T
    df.to_csv(path, sep=sep)


def assert_same(adata, counts, barcodes, genes):
    assert adata.shape == counts.shape
    assert list(adata.obs_names) == list(barcodes)
    assert list(adata.var_names) == list(genes)
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), counts)


@pytest.fixture(scope="module")
def data():
    return make_counts()


# --------------------------------------------------------------------------- readers

def test_read_10x_h5(tmp_path, data):
    counts, bcs, genes = data
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(path, counts, bcs, genes)
    a = rna.read_counts(path, sample="s1")
    assert_same(a, counts, bcs, genes["gene"])
    assert list(a.var["gene_ids"]) == list(genes["gene_id"])


def test_read_mtx_gz_folder(tmp_path, data):
    counts, bcs, genes = data
    demo.write_10x_mtx(tmp_path / "mtx", counts, bcs, genes)
    a = rna.read_counts(tmp_path / "mtx")
    assert_same(a, counts, bcs, genes["gene"])
    assert list(a.var["gene_ids"]) == list(genes["gene_id"])
    # pointing at the matrix file reads its folder
    assert rna.read_counts(tmp_path / "mtx" / "matrix.mtx.gz").shape == counts.shape


def _gunzip_folder(src, dst, features_name="features.tsv", drop_type_column=False):
    dst.mkdir()
    for name, out in (("matrix.mtx.gz", "matrix.mtx"), ("barcodes.tsv.gz", "barcodes.tsv"),
                      ("features.tsv.gz", features_name)):
        with gzip.open(src / name, "rt") as fi, open(dst / out, "w") as fo:
            if drop_type_column and name.startswith("features"):
                fo.writelines("\t".join(line.split("\t")[:2]) + "\n" for line in fi.read().splitlines())
            else:
                shutil.copyfileobj(fi, fo)


@pytest.mark.parametrize("layout", ["plain_v3", "legacy_genes_tsv"])
def test_read_mtx_plain_folders(tmp_path, data, layout):
    counts, bcs, genes = data
    demo.write_10x_mtx(tmp_path / "gz", counts, bcs, genes)
    if layout == "plain_v3":
        _gunzip_folder(tmp_path / "gz", tmp_path / "plain")
    else:
        _gunzip_folder(tmp_path / "gz", tmp_path / "plain", "genes.tsv", drop_type_column=True)
    a = rna.read_counts(tmp_path / "plain", fmt="10x_mtx")
    assert_same(a, counts, bcs, genes["gene"])
    assert list(a.var["gene_ids"]) == list(genes["gene_id"])


def test_mtx_folder_missing_file(tmp_path, data):
    counts, bcs, genes = data
    demo.write_10x_mtx(tmp_path / "mtx", counts, bcs, genes)
    (tmp_path / "mtx" / "barcodes.tsv.gz").unlink()
    with pytest.raises(CosmicInputError, match=r"barcodes\.tsv\[\.gz\].*sample 's9'|sample 's9'.*barcodes"):
        rna.read_counts(tmp_path / "mtx", sample="s9")


def test_read_h5ad_with_and_without_counts_layer(tmp_path, data):
    counts, bcs, genes = data
    src = anndata.AnnData(X=sp.csr_matrix(counts.astype(np.float32)),
                          obs=pd.DataFrame(index=bcs), var=pd.DataFrame(index=genes["gene"]))
    src.write_h5ad(tmp_path / "x.h5ad")
    assert_same(rna.read_counts(tmp_path / "x.h5ad"), counts, bcs, genes["gene"])

    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    src2 = anndata.AnnData(X=lognorm, obs=pd.DataFrame(index=bcs), var=pd.DataFrame(index=genes["gene"]))
    src2.layers["counts"] = sp.csr_matrix(counts)
    src2.write_h5ad(tmp_path / "layer.h5ad")
    assert_same(rna.read_counts(tmp_path / "layer.h5ad"), counts, bcs, genes["gene"])

    # log-normalised X and no counts layer: told to store raw counts in layers['counts']
    del src2.layers["counts"]
    src2.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(CosmicInputError, match=r"lognorm\.h5ad.*not integers.*layers\['counts'\]"):
        rna.read_counts(tmp_path / "lognorm.h5ad", sample="s1")


@pytest.mark.parametrize("orientation", ["cells_x_genes", "genes_x_cells"])
@pytest.mark.parametrize("sep,ext", [(",", "csv"), ("\t", "tsv")])
def test_read_table_explicit_and_auto(tmp_path, data, orientation, sep, ext):
    counts, bcs, genes = data
    path = tmp_path / f"counts.{ext}"
    write_csv(path, counts, bcs, genes["gene"], orientation, sep)
    assert_same(rna.read_counts(path, orientation=orientation), counts, bcs, genes["gene"])
    auto = rna.read_counts(path)  # detected from gene symbols and barcode-like labels
    if ext == "csv":
        gz = tmp_path / "counts.csv.gz"
        pd.read_csv(path, index_col=0).to_csv(gz)
        assert_same(rna.read_counts(gz), counts, bcs, genes["gene"])
    assert_same(auto, counts, bcs, genes["gene"])
    assert auto.uns["counts_orientation"] == orientation


def test_orientation_detection_by_genes_alone_and_by_barcodes_alone():
    genes = ["PCNA", "MCM5", "MT-CO1", "GENE1"]
    cells = ["cell_a", "cell_b", "cell_c"]
    assert rna.detect_orientation(cells, genes) == "cells_x_genes"
    assert rna.detect_orientation(genes, cells) == "genes_x_cells"
    bcs = ["AAACCTGAGAAACCAT-1", "AAACCTGAGAAACCGC-1"]
    assert rna.detect_orientation(bcs, ["g1", "g2"]) == "cells_x_genes"
    assert rna.detect_orientation(["g1", "g2"], bcs) == "genes_x_cells"
    assert rna.detect_orientation(["g1", "g2"], ["c1", "c2"]) is None


def test_orientation_undecidable_asks_for_sample_sheet_column(tmp_path):
    path = tmp_path / "ambiguous.csv"
    pd.DataFrame(np.ones((3, 4), int), index=["c1", "c2", "c3"], columns=list("wxyz")).to_csv(path)
    with pytest.raises(CosmicInputError) as err:
        rna.read_counts(path, sample="s2")
    msg = str(err.value)
    assert "ambiguous.csv" in msg and "sample 's2'" in msg and "counts_orientation" in msg


def test_unknown_format_and_missing_file(tmp_path):
    bad = tmp_path / "counts.xlsx"
    bad.write_text("x")
    with pytest.raises(CosmicInputError, match=r"counts\.xlsx.*counts_format"):
        rna.read_counts(bad, sample="s1")
    with pytest.raises(CosmicInputError, match="unknown counts format"):
        rna.read_counts(bad, fmt="loom")
    with pytest.raises(CosmicInputError, match="not found"):
        rna.read_counts(tmp_path / "nope.h5")


# --------------------------------------------------------------------------- bad inputs

def _bad_csv(tmp_path, mutate, name="bad.csv"):
    counts, bcs, genes = make_counts(n_cells=6, n_genes=20)
    df = pd.DataFrame(counts.astype(float), index=bcs, columns=genes["gene"])
    df = mutate(df)
    path = tmp_path / name
    df.to_csv(path)
    return path


@pytest.mark.parametrize("mutate,pattern", [
    (lambda d: d.mask(np.eye(*d.shape, dtype=bool)), r"NaN.*write 0"),
    (lambda d: d.mul(-1), r"negative.*raw UMI counts"),
    (lambda d: d.add(0.5), r"not integers.*raw UMI counts"),
    (lambda d: d.set_axis([d.index[0]] * 2 + list(d.index[2:]), axis=0), r"more than once.*unique"),
    (lambda d: d.set_axis([""] + list(d.columns[1:]), axis=1), r"missing or empty name.*gene name"),
    (lambda d: d.assign(cell_type="T"), r"cell_type.*non-numeric.*remove annotation columns"),
], ids=["nan", "negative", "non_integer", "duplicate_barcodes", "missing_gene_name", "non_numeric"])
def test_bad_counts_are_explained(tmp_path, mutate, pattern):
    path = _bad_csv(tmp_path, mutate)
    with pytest.raises(CosmicInputError, match=pattern) as err:
        rna.read_counts(path, sample="patient7", orientation="cells_x_genes")
    assert "sample 'patient7'" in str(err.value) and "bad.csv" in str(err.value)


def test_duplicate_barcodes_in_columns_are_not_renamed(tmp_path):
    counts, bcs, genes = make_counts(n_cells=6, n_genes=20)
    path = tmp_path / "gxc.tsv"
    write_csv(path, counts, [bcs[0]] + bcs[1:5] + [bcs[0]], genes["gene"], "genes_x_cells", "\t")
    with pytest.raises(CosmicInputError, match=rf"gxc\.tsv.*more than once.*{bcs[0]}"):
        rna.read_counts(path)


def test_missing_gene_name_in_mtx_and_empty_matrix(tmp_path, data):
    counts, bcs, genes = data
    genes = genes.copy()
    genes.loc[3, "gene"] = ""
    demo.write_10x_mtx(tmp_path / "mtx", counts, bcs, genes)
    with pytest.raises(CosmicInputError, match=r"sample 'sx'.*missing or empty name"):
        rna.read_counts(tmp_path / "mtx", sample="sx")
    path = tmp_path / "zeros.csv"
    write_csv(path, np.zeros((3, 4), int), ["a", "b", "c"], CC_GENES[:4])
    with pytest.raises(CosmicInputError, match="empty"):
        rna.read_counts(path)


def test_duplicate_gene_symbols_made_unique_with_warning(tmp_path, data):
    counts, bcs, genes = data
    genes = genes.copy()
    genes.loc[20, "gene"] = genes.loc[21, "gene"]
    write_10x_h5(tmp_path / "dup.h5", counts, bcs, genes)
    with pytest.warns(UserWarning, match="made unique"):
        a = rna.read_counts(tmp_path / "dup.h5")
    assert a.var_names.is_unique
    assert list(a.var["gene_ids"]) == list(genes["gene_id"])


# --------------------------------------------------------------------------- params

def test_params_from_config():
    p = rna.RnaParams.from_config({"min_genes": 10, "hvg_flavor": "cell_ranger", "max_counts": 5e4})
    assert (p.min_genes, p.hvg_flavor, p.max_counts, p.min_counts) == (10, "cell_ranger", 5e4, 500)
    assert rna.RnaParams.from_config(None) == rna.RnaParams()
    with pytest.raises(CosmicInputError, match=r"unknown key.*min_gene\b.*allowed"):
        rna.RnaParams.from_config({"min_gene": 3})
    with pytest.raises(CosmicInputError, match="hvg_flavor"):
        rna.RnaParams.from_config({"hvg_flavor": "pearson"})
    with pytest.raises(CosmicInputError, match="max_mito_fraction"):
        rna.RnaParams.from_config({"max_mito_fraction": 20})
    with pytest.raises(CosmicInputError, match="n_pcs"):
        rna.RnaParams.from_config({"n_pcs": 0})


# --------------------------------------------------------------------------- processing

SMALL = dict(min_genes=20, min_counts=50, min_cells=3, n_top_genes=50, n_pcs=10)


@pytest.fixture(scope="module")
def raw(data):
    counts, bcs, genes = data
    counts = counts.copy()
    mito = [list(genes["gene"]).index(m) for m in MITO]
    counts[0, mito] = counts[0].sum() * 2  # cell 0: >80% mitochondrial
    counts[1, :] = 0
    counts[1, :5] = 1                      # cell 1: 5 genes, 5 counts
    a = anndata.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=pd.DataFrame(index=bcs),
                        var=pd.DataFrame({"gene_ids": genes["gene_id"].to_numpy()}, index=genes["gene"]))
    return a


def test_qc_filters_report_reasons(raw):
    out, dropped = rna.process_counts(raw, rna.RnaParams(**SMALL), sample="s1")
    bcs = list(raw.obs_names)
    assert bcs[0] not in out.obs_names and bcs[1] not in out.obs_names
    assert out.n_obs == raw.n_obs - 2
    reasons = dropped.set_index("barcode")["reason"]
    assert reasons[bcs[0]] == "max_mito_fraction"
    assert set(reasons[bcs[1]].split(";")) == {"min_genes", "min_counts"}
    assert re.fullmatch(r"mito fraction 0\.8\d+ > 0\.2", dropped.set_index("barcode").loc[bcs[0], "detail"])
    assert (dropped["sample"] == "s1").all()
    assert (out.obs["sample"] == "s1").all()
    assert out.obs["mito_fraction"].max() <= 0.2
    assert {"total_counts", "n_genes_by_counts", "pct_counts_mt"} <= set(out.obs.columns)
    assert raw.n_obs == N_CELLS and "counts" not in raw.layers  # input untouched


def test_max_counts_and_gene_filter(raw):
    tc = np.asarray(raw.X.sum(1)).ravel()
    cap = float(np.sort(tc)[-3])  # the two largest libraries exceed it
    out, dropped = rna.process_counts(raw, rna.RnaParams(**SMALL, max_counts=cap - 0.5))
    assert (dropped["reason"].str.contains("max_counts")).sum() == 3
    assert out.var["n_cells"].min() >= 3


def test_layers_hvg_pca(raw):
    out, _ = rna.process_counts(raw, rna.RnaParams(**SMALL))
    kept = raw[out.obs_names, out.var_names]
    np.testing.assert_array_equal(out.layers["counts"].toarray(), kept.X.toarray())
    # X is log1p of counts normalised to target_sum
    np.testing.assert_allclose(np.expm1(out.X.toarray()).sum(1), 1e4, rtol=1e-4)
    assert out.var["highly_variable"].sum() == 50 and out.n_vars > 50  # all genes kept
    assert out.obsm["X_pca"].shape == (out.n_obs, 10)
    again, _ = rna.process_counts(raw, rna.RnaParams(**SMALL))
    np.testing.assert_array_equal(out.obsm["X_pca"], again.obsm["X_pca"])


def test_caps_on_hvg_and_pcs(raw):
    out, _ = rna.process_counts(raw, rna.RnaParams(**{**SMALL, "n_top_genes": 5000, "n_pcs": 500}))
    assert out.var["highly_variable"].all()
    assert out.obsm["X_pca"].shape[1] == min(out.n_obs, out.n_vars) - 1


@pytest.mark.parametrize("flavor", ["cell_ranger", "seurat_v3"])
def test_other_hvg_flavors(raw, flavor):
    params = rna.RnaParams(**SMALL, hvg_flavor=flavor)
    try:
        out, _ = rna.process_counts(raw, params)
    except CosmicInputError as err:  # seurat_v3 needs scikit-misc
        assert flavor == "seurat_v3" and "scikit-misc" in str(err)
        return
    assert out.var["highly_variable"].sum() == 50


def test_no_cells_survive_names_filter_and_key(raw):
    with pytest.raises(CosmicInputError) as err:
        rna.process_counts(raw, rna.RnaParams(**{**SMALL, "min_counts": 10**9}), sample="s3")
    msg = str(err.value)
    assert "sample 's3'" in msg and "min_counts removed 60 of 60" in msg and "rna.min_counts" in msg


def test_processed_h5ad_opens_with_plain_anndata(tmp_path, raw):
    out, _ = rna.process_counts(raw, rna.RnaParams(**SMALL), sample="s1")
    path = tmp_path / "rna" / "s1.h5ad"
    rna.write_h5ad(out, path)
    back = anndata.read_h5ad(path)
    assert back.shape == out.shape and "counts" in back.layers and "X_pca" in back.obsm
    assert back.uns["cosmic_rna"]["n_cells_kept"] == out.n_obs
    assert [p.name for p in path.parent.iterdir()] == ["s1.h5ad"]  # no temp file left
    rna.plot_qc(back, tmp_path / "qc.png")  # thresholds read back from uns["cosmic_rna"]


def test_plot_qc(tmp_path, raw):
    out, dropped = rna.process_counts(raw, rna.RnaParams(**SMALL))
    rna.plot_qc(out, tmp_path / "qc.png", dropped=dropped)
    rna.plot_qc(raw, tmp_path / "qc_raw.pdf")
    assert (tmp_path / "qc.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "qc_raw.pdf").stat().st_size > 0


# --------------------------------------------------------------------------- external embeddings

@pytest.fixture
def small_adata():
    bcs = [f"AAAC{i:02d}GT-1" for i in range(5)]
    return anndata.AnnData(X=np.zeros((5, 2), np.float32), obs=pd.DataFrame(index=bcs))


def _embedding(bcs):
    rng = np.random.default_rng(1)
    extra = ["TTTT99GG-1"]
    order = list(reversed(bcs)) + extra  # file order differs from adata; an extra barcode
    return order, rng.standard_normal((len(order), 4))


def test_attach_embedding_each_kind(tmp_path, small_adata):
    bcs = list(small_adata.obs_names)
    order, values = _embedding(bcs)
    expected = pd.DataFrame(values, index=order).loc[bcs].to_numpy(np.float32)

    h5 = anndata.AnnData(obs=pd.DataFrame(index=order))
    h5.obsm["X_scGPT"] = values
    h5.write_h5ad(tmp_path / "scgpt.h5ad")
    np.save(tmp_path / "uce.npy", values)
    (tmp_path / "uce.barcodes.tsv").write_text("\n".join(order) + "\n")
    np.save(tmp_path / "gf.npy", values)
    (tmp_path / "gf.barcodes.txt").write_text("\n".join(order) + "\n")
    pd.DataFrame(values, index=pd.Index(order, name="barcode")).to_csv(tmp_path / "scvi.csv")
    pd.DataFrame(values, index=order).to_csv(tmp_path / "scvi.tsv", sep="\t")

    for name, path, key in [("scgpt", "scgpt.h5ad", "X_scGPT"), ("scgpt2", "scgpt.h5ad", None),
                            ("uce", "uce.npy", None), ("geneformer", "gf.npy", None),
                            ("scvi", "scvi.csv", None), ("scvi_t", "scvi.tsv", None)]:
        rna.attach_embedding(small_adata, tmp_path / path, name, key=key)
        np.testing.assert_allclose(small_adata.obsm[f"X_{name}"], expected, rtol=1e-6)


def test_attach_embedding_missing_barcodes_and_nans(tmp_path, small_adata):
    bcs = list(small_adata.obs_names)
    order, values = _embedding(bcs)
    df = pd.DataFrame(values, index=order)
    df.drop(index=[bcs[2]]).to_csv(tmp_path / "partial.csv")
    with pytest.raises(CosmicInputError) as err:
        rna.attach_embedding(small_adata, tmp_path / "partial.csv", "scvi", sample="s1")
    msg = str(err.value)
    assert "1 of 5 cells" in msg and bcs[2] in msg and "partial.csv" in msg and "sample 's1'" in msg

    df.loc[bcs[3], 1] = np.nan
    df.to_csv(tmp_path / "nan.csv")
    with pytest.raises(CosmicInputError, match=rf"NaN.*{bcs[3]}"):
        rna.attach_embedding(small_adata, tmp_path / "nan.csv", "scvi")

    np.save(tmp_path / "lonely.npy", values)
    with pytest.raises(CosmicInputError, match=r"lonely\.barcodes\.tsv"):
        rna.attach_embedding(small_adata, tmp_path / "lonely.npy", "uce")
    assert "X_scvi" not in small_adata.obsm and "X_uce" not in small_adata.obsm
