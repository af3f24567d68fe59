"""Precomputed per-cell morphology (CellProfiler or similar) as the imaging side of a sample.

Many labs already have one row of nuclear features per sequenced cell instead of images. Such a
sample skips segmentation, nuclei measurement and foundation-model pretraining: its table is
joined to the RNA cells by barcode and becomes ``obsm["X_morph"]`` of the paired AnnData, with
the same contract as image-derived samples (``uns["morph_features"]``, a pairing QC table).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .errors import CosmicDataWarning, CosmicInputError

BARCODE_COLUMNS = ("barcode", "cell_barcode", "cell_id", "cell", "index")
NO_MORPHOLOGY_ROW = "no_morphology_row"  # sequenced cell absent from the morphology table


@dataclass
class MorphologyTableParams:
    """Config block ``morphology_table:`` (see config/README.md)."""

    barcode_column: str | None = None  # None: 'barcode'-like column, or the h5ad obs names
    columns: list[str] = field(default_factory=list)  # empty: every numeric column
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, mapping=None) -> "MorphologyTableParams":
        from .config import params_from_config

        return params_from_config(cls, "morphology_table", mapping)


def feature_name(column: str) -> str:
    """``morph_<column>`` with characters outside [A-Za-z0-9_] replaced, e.g. 'size.um' -> 'morph_size_um'."""
    clean = re.sub(r"[^A-Za-z0-9_]+", "_", str(column)).strip("_")
    return clean if clean.startswith("morph_") else f"morph_{clean}"


def _read_any(path: Path, sample) -> tuple[pd.DataFrame, bool]:
    """The raw table and whether its index already holds the barcodes (h5ad obs names)."""
    name = path.name.lower()
    where = f"sample '{sample}': morphology table '{path}'"
    try:
        if name.endswith(".h5ad"):
            return ad.read_h5ad(path, backed="r").obs.copy(), True
        if name.endswith(".parquet"):
            return pd.read_parquet(path), False
        if name.endswith((".tsv", ".tsv.gz", ".txt")):
            return pd.read_csv(path, sep="\t"), False
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path), False
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise CosmicInputError(f"{where} could not be read ({type(exc).__name__}: {exc}). "
                               "Check that the file is complete and in the format its suffix says.") from exc
    raise CosmicInputError(f"{where}: unsupported file type; use .csv, .tsv, .parquet or .h5ad (obs columns).")


def read_morphology_table(path, sample=None, params: MorphologyTableParams | None = None) -> pd.DataFrame:
    """Read a per-cell morphology table: index = barcode (str), columns = numeric features ``morph_*``.

    Raises :class:`CosmicInputError` naming the file, the sample and the fix for a missing barcode
    column, duplicate barcodes, requested columns that are absent or not numeric, and missing values.
    """
    params = params or MorphologyTableParams()
    path = Path(path)
    where = f"sample '{sample}': morphology table '{path}'"
    raw, indexed = _read_any(path, sample)
    if params.barcode_column is not None:
        if params.barcode_column not in raw.columns:
            raise CosmicInputError(f"{where} has no column '{params.barcode_column}' (morphology_table.barcode_column); "
                                   f"columns: {list(raw.columns)[:20]}.")
        barcodes = raw.pop(params.barcode_column)
    elif indexed:
        barcodes = pd.Series(raw.index, index=raw.index)
    else:
        found = [c for c in BARCODE_COLUMNS if c in raw.columns]
        if not found:
            raise CosmicInputError(f"{where} has no barcode column (looked for {list(BARCODE_COLUMNS)}). "
                                   "Name the column 'barcode' or set morphology_table.barcode_column.")
        barcodes = raw.pop(found[0])
    barcodes = barcodes.astype(str).to_numpy()
    if pd.isna(barcodes).any() or (barcodes == "").any() or (barcodes == "nan").any():
        raise CosmicInputError(f"{where}: some rows have no barcode. Every row must name its cell.")
    dup = pd.Index(barcodes)[pd.Index(barcodes).duplicated()].unique()
    if len(dup):
        raise CosmicInputError(f"{where}: {len(dup)} barcode(s) occur more than once (e.g. {list(dup[:5])}). "
                               "Keep one row per cell (e.g. the nucleus the cell was paired with).")
    raw.index = pd.Index(barcodes, name="barcode")

    if params.columns:
        missing = [c for c in params.columns if c not in raw.columns]
        if missing:
            raise CosmicInputError(f"{where} lacks the column(s) {missing} named in morphology_table.columns; "
                                   f"it has {list(raw.columns)[:30]}.")
        bad = [c for c in params.columns if not pd.api.types.is_numeric_dtype(raw[c])
               or pd.api.types.is_bool_dtype(raw[c])]
        if bad:
            raise CosmicInputError(f"{where}: column(s) {bad} are not numeric "
                                   f"(e.g. {raw[bad[0]].dropna().astype(str).head(3).tolist()}). "
                                   "Morphology features must be numbers; remove them from morphology_table.columns.")
        columns = list(params.columns)
    else:
        columns = [c for c in raw.columns if pd.api.types.is_numeric_dtype(raw[c])
                   and not pd.api.types.is_bool_dtype(raw[c]) and c not in params.exclude]
        skipped = [c for c in raw.columns if c not in columns and c not in params.exclude]
        if skipped:
            warnings.warn(f"{where}: non-numeric column(s) {skipped[:10]} ignored as morphology features",
                          CosmicDataWarning, stacklevel=2)
        if not columns:
            raise CosmicInputError(f"{where} has no numeric column to use as morphology features. "
                                   "Add feature columns or list them in morphology_table.columns.")
    table = raw[columns].astype(np.float64)
    nan = table.isna().sum()
    if nan.any():
        worst = nan[nan > 0].sort_values(ascending=False)
        raise CosmicInputError(
            f"{where}: missing values in {len(worst)} feature column(s) ({worst.head(5).to_dict()} cells). "
            "Impute or drop those cells (or the column) before running; COSMIC does not guess features.")
    inf = ~np.isfinite(table.to_numpy())
    if inf.any():
        raise CosmicInputError(f"{where}: infinite values in column(s) "
                               f"{list(table.columns[inf.any(0)])}. Replace them with finite numbers.")
    const = [c for c in columns if table[c].nunique() < 2]
    if const:
        warnings.warn(f"{where}: constant feature column(s) {const} carry no information",
                      CosmicDataWarning, stacklevel=2)
    names = [feature_name(c) for c in columns]
    if len(set(names)) != len(names):
        raise CosmicInputError(f"{where}: feature columns {columns} collide after renaming to {names}; rename them.")
    table.columns = names
    return table


def pair_with_table(sample: str, rna: ad.AnnData, table: pd.DataFrame, metadata: dict | None = None,
                    rna_dropped: pd.DataFrame | None = None, table_path=None,
                    embedding: str = "pca") -> tuple[ad.AnnData, pd.DataFrame]:
    """Join RNA cells and morphology rows by barcode.

    Returns the paired AnnData (obs ids ``<sample>:<barcode>``, ``obsm["X_morph"]``,
    ``obsm["X_rna"]`` from ``obsm["X_<embedding>"]``) and a QC table with one row per barcode and
    its status (the statuses of :mod:`cosmic.pairing`).
    """
    from .pairing import FILTERED, NOT_SEQUENCED, PAIRED, assemble_paired

    where = f"sample '{sample}': morphology table '{table_path or '<table>'}'"
    rna_barcodes = pd.Index(rna.obs_names.astype(str))
    filtered = set(rna_dropped["barcode"].astype(str)) if rna_dropped is not None and len(rna_dropped) else set()
    shared = rna_barcodes.intersection(table.index)
    if len(shared) == 0:
        raise CosmicInputError(
            f"{where} shares no barcode with the count matrix ({len(table)} table rows, e.g. {list(table.index[:2])}; "
            f"{len(rna_barcodes)} expression barcodes, e.g. {list(rna_barcodes[:2])}). Check that both come from "
            "the same run and use the same barcode format.")
    table_only = table.index.difference(rna_barcodes)
    qc = pd.concat([
        pd.DataFrame({"barcode": shared, "status": PAIRED}),
        pd.DataFrame({"barcode": table_only,
                      "status": [FILTERED if b in filtered else NOT_SEQUENCED for b in table_only]}),
        pd.DataFrame({"barcode": rna_barcodes.difference(table.index), "status": NO_MORPHOLOGY_ROW}),
    ], ignore_index=True)
    qc.insert(0, "sample", sample)
    unknown = (qc["status"] == NOT_SEQUENCED).sum()
    if unknown:
        warnings.warn(f"{where}: {unknown} barcode(s) are not in the count matrix (e.g. "
                      f"{list(qc.loc[qc['status'] == NOT_SEQUENCED, 'barcode'][:3])}); they are left out",
                      CosmicDataWarning, stacklevel=2)

    order = rna_barcodes[rna_barcodes.isin(shared)]
    obs = pd.DataFrame({"sample": sample, "barcode": order.to_numpy(), "pairing_status": PAIRED},
                       index=pd.Index([f"{sample}:{b}" for b in order], name="cell_id"))
    paired = assemble_paired(sample, rna, order.to_numpy(), obs, metadata, table.loc[order].to_numpy(np.float32),
                             list(table.columns), embedding)
    paired.uns["pairing"] = {"sample": sample, "n_paired": int(len(order)), "n_rna_cells": int(rna.n_obs),
                             "n_pairing_rows": int(len(table)), "n_nuclei": int(len(table)),
                             "source": "morphology_table"}
    return paired, qc
