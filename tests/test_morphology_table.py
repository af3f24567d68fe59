"""Precomputed morphology tables as the imaging side of a sample, and per-cell annotations."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cosmic import pairing
from cosmic.config import morphology_mode
from cosmic.errors import CosmicInputError
from cosmic.morphology_table import (
    NO_MORPHOLOGY_ROW,
    MorphologyTableParams,
    feature_name,
    pair_with_table,
    read_morphology_table,
)


def _table(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "barcode": [f"BC{i:03d}-1" for i in range(n)],
        "Nuclei_AreaShape_Area": rng.normal(400, 50, n),
        "dapi.sum": rng.normal(5, 0.2, n),
        "well": ["A01"] * n,
    })


def _rna(barcodes, seed=1):
    rng = np.random.default_rng(seed)
    a = ad.AnnData(rng.poisson(2, (len(barcodes), 5)).astype(np.float32),
                   obs=pd.DataFrame(index=pd.Index(barcodes)),
                   var=pd.DataFrame(index=[f"G{i}" for i in range(5)]))
    a.obsm["X_pca"] = rng.normal(size=(len(barcodes), 3)).astype(np.float32)
    return a


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_read_formats_numeric_columns_only(tmp_path, suffix):
    path = tmp_path / f"morph{suffix}"
    t = _table()
    if suffix == ".parquet":
        t.to_parquet(path)
    else:
        t.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    with pytest.warns(UserWarning, match="non-numeric"):
        out = read_morphology_table(path, sample="s1")
    assert list(out.columns) == ["morph_Nuclei_AreaShape_Area", "morph_dapi_sum"]
    assert out.index[0] == "BC000-1"
    np.testing.assert_allclose(out["morph_dapi_sum"], t["dapi.sum"])


def test_read_h5ad_obs_with_selected_columns(tmp_path):
    t = _table().set_index("barcode")
    path = tmp_path / "cells.h5ad"
    ad.AnnData(np.zeros((len(t), 1), np.float32), obs=t).write_h5ad(path)
    out = read_morphology_table(path, "s1", MorphologyTableParams(columns=["dapi.sum"]))
    assert list(out.columns) == ["morph_dapi_sum"] and out.index.equals(pd.Index(t.index, name="barcode"))


@pytest.mark.parametrize("mutate, columns, match", [
    (lambda t: t.assign(**{"dapi.sum": np.where(np.arange(len(t)) < 3, np.nan, t["dapi.sum"])}), [],
     "missing values in 1 feature column"),
    (lambda t: t, ["well"], "not numeric"),
    (lambda t: t, ["Nuclei_Intensity"], "lacks the column"),
    (lambda t: pd.concat([t, t.iloc[:2]]), [], "occur more than once"),
    (lambda t: t.rename(columns={"barcode": "bc"}), [], "no barcode column"),
])
def test_bad_tables_name_file_sample_and_fix(tmp_path, mutate, columns, match):
    path = tmp_path / "bad.csv"
    mutate(_table()).to_csv(path, index=False)
    with pytest.raises(CosmicInputError, match=match) as err:
        read_morphology_table(path, "s7", MorphologyTableParams(columns=columns, exclude=["well"]))
    assert "s7" in str(err.value) and "bad.csv" in str(err.value)


def test_unreadable_and_unsupported_files(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(CosmicInputError, match="could not be read"):
        read_morphology_table(broken, "s1")
    with pytest.raises(CosmicInputError, match="unsupported file type"):
        read_morphology_table(tmp_path / "x.xlsx", "s1")


def test_pair_with_table_joins_by_barcode_and_records_qc():
    table = _table(20).set_index("barcode")[["Nuclei_AreaShape_Area", "dapi.sum"]]
    table.columns = [feature_name(c) for c in table.columns]
    # RNA has 15 of the 20 table cells plus 3 cells without a table row; 2 table cells were QC-filtered.
    barcodes = list(table.index[:15]) + ["X1-1", "X2-1", "X3-1"]
    dropped = pd.DataFrame({"barcode": list(table.index[15:17])})
    with pytest.warns(UserWarning, match="not in the count matrix"):
        paired, qc = pair_with_table("s1", _rna(barcodes), table, metadata={"treatment": "control"},
                                     rna_dropped=dropped)
    assert paired.n_obs == 15
    assert list(paired.obs_names[:2]) == ["s1:BC000-1", "s1:BC001-1"]
    np.testing.assert_allclose(paired.obsm["X_morph"][:, 1], table["morph_dapi_sum"].iloc[:15], rtol=1e-6)
    assert paired.uns["morph_features"] == list(table.columns)
    assert (paired.obs["treatment"] == "control").all() and "X_rna" in paired.obsm
    counts = qc["status"].value_counts()
    assert counts[pairing.PAIRED] == 15 and counts[NO_MORPHOLOGY_ROW] == 3
    assert counts[pairing.FILTERED] == 2 and counts[pairing.NOT_SEQUENCED] == 3
    summary = pairing.summarise_qc(qc)
    assert summary.loc[0, "paired_fraction_of_cells"] == pytest.approx(15 / 18)


def test_pair_with_table_without_shared_barcodes_fails():
    table = pd.DataFrame({"morph_a": [1.0, 2.0]}, index=pd.Index(["A-1", "B-1"], name="barcode"))
    with pytest.raises(CosmicInputError, match="shares no barcode"):
        pair_with_table("s1", _rna(["C-1", "D-1"]), table, table_path="t.csv")


def test_annotations_override_sample_level_labels(tmp_path):
    paired = _rna(["A-1", "B-1", "C-1"])
    paired.obs["barcode"] = paired.obs_names
    paired.obs["response"] = "mixed"
    path = tmp_path / "ann.tsv"
    pd.DataFrame({"barcode": ["A-1", "B-1"], "response": ["resistant", "responsive"]}).to_csv(path, sep="\t", index=False)
    with pytest.warns(UserWarning, match="no row"):
        pairing.apply_annotations(paired, pairing.read_annotations(path, "s1"), "s1", path)
    assert paired.obs["response"].tolist()[:2] == ["resistant", "responsive"]
    assert pd.isna(paired.obs["response"].iloc[2])
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"barcode": ["A-1"], "sample": ["x"]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(CosmicInputError, match="set by the workflow"):
        pairing.read_annotations(bad, "s1")


def test_sample_sheet_kinds_cannot_mix():
    sheet = pd.DataFrame({"sample": ["a", "b"], "images": ["img", np.nan], "pairing": ["p.tsv", np.nan],
                          "morphology": [np.nan, "m.csv"], "counts": ["c", "c"]}).set_index("sample", drop=False)
    with pytest.raises(CosmicInputError, match="mixes samples"):
        morphology_mode(sheet)
    assert morphology_mode(sheet.iloc[[1]]) is True
    assert morphology_mode(sheet.iloc[[0]]) is False
    both = sheet.iloc[[0]].assign(morphology="m.csv")
    with pytest.raises(CosmicInputError, match="both 'morphology'"):
        morphology_mode(both)
