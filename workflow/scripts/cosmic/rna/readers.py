"""Read raw counts in any supported format (10x h5, 10x matrix folder, h5ad, csv/tsv) as cells x genes.

Readers are scanpy's (``read_10x_h5``, ``read_10x_mtx``, ``read_mtx``), anndata's
(``read_h5ad``) and pandas' (tables); every result is checked by :func:`.validate.validate_counts`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scanpy as sc

from ..errors import CosmicInputError, describe
from .orientation import detect_orientation
from .validate import validate_counts

FORMATS = ("10x_h5", "10x_mtx", "h5ad", "csv", "tsv")
ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")
_UNNAMED_RE = re.compile(r"^Unnamed: \d+$")


def _strip_compression(name: str) -> str:
    for ext in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def infer_format(path) -> str:
    """Guess the counts format from the path: a folder is a 10x mtx folder, else by extension."""
    path = Path(path)
    if path.is_dir():
        return "10x_mtx"
    name = _strip_compression(path.name.lower())
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    if name.endswith(".mtx"):
        return "10x_mtx"  # the matrix file of a 10x folder: read the folder
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".txt")):
        return "tsv"
    raise CosmicInputError(
        f"{describe(path)}: cannot tell the counts format from the name. Supported: a 10x "
        "Cell Ranger '.h5', a 10x matrix folder (matrix.mtx[.gz], barcodes.tsv[.gz], "
        "features.tsv[.gz] or genes.tsv), '.h5ad', '.csv' or '.tsv'. Rename the file or set the "
        f"sample sheet column 'counts_format' to one of {list(FORMATS)}."
    )


def read_counts(path, sample=None, fmt: str = "auto", orientation: str = "auto") -> anndata.AnnData:
    """Read a raw count matrix as cells x genes, validated.

    ``fmt`` is one of ``"auto"`` or :data:`FORMATS`; ``orientation`` (csv/tsv only) one of
    :data:`ORIENTATIONS`. Returns an AnnData with float32 CSR ``X`` of raw counts, ``obs_names``
    the barcodes and ``var_names`` unique gene symbols (gene IDs in ``var["gene_ids"]`` when the
    file has them). Raises :class:`CosmicInputError` for anything unusable.
    """
    path = Path(path)
    if not path.exists():
        raise CosmicInputError(
            f"{describe(path, sample)}: counts file not found. Fix the 'counts' column of the "
            "sample sheet."
        )
    if fmt in (None, "", "auto"):
        fmt = infer_format(path)
    if fmt not in FORMATS:
        raise CosmicInputError(
            f"{describe(path, sample)}: unknown counts format {fmt!r}; set the sample sheet column "
            f"'counts_format' to 'auto' or one of {list(FORMATS)}."
        )
    if orientation in (None, ""):
        orientation = "auto"
    if orientation not in ORIENTATIONS:
        raise CosmicInputError(
            f"{describe(path, sample)}: unknown counts orientation {orientation!r}; set the sample "
            f"sheet column 'counts_orientation' to one of {list(ORIENTATIONS)}."
        )

    with warnings.catch_warnings():
        # We check and fix name uniqueness ourselves, with a message naming the file.
        warnings.filterwarnings("ignore", message=".*names are not unique.*")
        try:
            if fmt == "10x_h5":
                adata = sc.read_10x_h5(path)
            elif fmt == "10x_mtx":
                adata = _read_mtx_folder(path.parent if path.is_file() else path, sample)
            elif fmt == "h5ad":
                adata = _read_h5ad_counts(path, sample)
            else:
                adata = _read_table(path, sample, sep="," if fmt == "csv" else "\t",
                                    orientation=orientation)
        except CosmicInputError:
            raise
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise CosmicInputError(
                f"{describe(path, sample)}: could not be read as {fmt} counts ({type(err).__name__}: "
                f"{err}). Check that the file is complete and of the declared format (sample "
                "sheet column 'counts_format')."
            ) from err
    return validate_counts(adata, path, sample)


def _find(folder: Path, *names: str) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_mtx_folder(folder: Path, sample) -> anndata.AnnData:
    matrix = _find(folder, "matrix.mtx.gz", "matrix.mtx")
    barcodes = _find(folder, "barcodes.tsv.gz", "barcodes.tsv")
    features = _find(folder, "features.tsv.gz", "features.tsv", "genes.tsv", "genes.tsv.gz")
    missing = [n for n, f in (("matrix.mtx[.gz]", matrix), ("barcodes.tsv[.gz]", barcodes),
                              ("features.tsv[.gz] or genes.tsv", features)) if f is None]
    if missing:
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise CosmicInputError(
            f"{describe(folder, sample)}: 10x matrix folder lacks {', '.join(missing)} "
            f"(found: {present}). Point the sample sheet 'counts' column at a Cell Ranger "
            "matrix folder (e.g. filtered_feature_bc_matrix/) or its .h5 file."
        )
    names = {matrix.name, barcodes.name, features.name}
    if names in ({"matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz"},
                 {"matrix.mtx", "barcodes.tsv", "genes.tsv"}):
        # The two layouts scanpy reads directly (Cell Ranger v3+ and v2).
        return sc.read_10x_mtx(folder, make_unique=False)
    # Mixed or uncompressed v3 layouts: scanpy's mtx reader plus the two tsv files.
    adata = sc.read_mtx(matrix).T
    feats = pd.read_csv(features, sep="\t", header=None, dtype=str, keep_default_na=False)
    bcs = pd.read_csv(barcodes, sep="\t", header=None, dtype=str, keep_default_na=False)
    if len(feats) != adata.n_vars or len(bcs) != adata.n_obs:
        raise CosmicInputError(
            f"{describe(folder, sample)}: {matrix.name} is {adata.n_vars} genes x {adata.n_obs} "
            f"cells but {features.name} lists {len(feats)} and {barcodes.name} {len(bcs)}. The "
            "three files must come from the same Cell Ranger run."
        )
    name_col = 1 if feats.shape[1] > 1 else 0
    adata.var_names = pd.Index(feats[name_col].to_numpy(), dtype=object)
    adata.var["gene_ids"] = feats[0].to_numpy()
    adata.obs_names = pd.Index(bcs[0].to_numpy(), dtype=object)
    if feats.shape[1] > 2:
        adata.var["feature_types"] = feats[2].to_numpy()
        adata = adata[:, adata.var["feature_types"].to_numpy() == "Gene Expression"].copy()
    return adata


def _read_h5ad_counts(path: Path, sample) -> anndata.AnnData:
    src = anndata.read_h5ad(path)
    if "counts" in src.layers:
        X = src.layers["counts"]
    elif src.X is not None:
        X = src.X
    else:
        raise CosmicInputError(
            f"{describe(path, sample)}: the h5ad has neither layers['counts'] nor X. Store the raw "
            "counts in layers['counts'] or X."
        )
    adata = anndata.AnnData(X=X, obs=src.obs.copy(), var=src.var.copy())
    adata.uns["counts_source"] = "layers['counts']" if "counts" in src.layers else "X"
    return adata



def _read_table(path: Path, sample, sep: str, orientation: str) -> anndata.AnnData:
    # pandas' C parser rather than anndata.read_csv: anndata's is a pure-Python line parser that
    # cannot report which column is non-numeric.
    df = pd.read_csv(path, sep=sep, index_col=0)
    # pandas renames repeated column labels ('X' -> 'X.1'); restore them from the raw header so
    # duplicate barcodes / genes are reported, not silently renamed.
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    if header.shape[1] == df.shape[1] + 1:
        df.columns = pd.Index(header.iloc[0, 1:].to_numpy(), dtype=object)
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise CosmicInputError(
            f"{describe(path, sample)}: the counts table is empty ({df.shape[0]} rows x "
            f"{df.shape[1]} columns). Expected barcodes on one axis, genes on the other, with "
            "labels in the first row and first column."
        )
    if orientation == "auto":
        orientation = detect_orientation(df.index, df.columns)
        if orientation is None:
            raise CosmicInputError(
                f"{describe(path, sample)}: cannot tell whether rows are cells or genes (row "
                f"labels start {list(map(str, df.index[:3]))}, column labels start "
                f"{list(map(str, df.columns[:3]))}). Set the sample sheet column "
                "'counts_orientation' to 'cells_x_genes' (one row per cell) or 'genes_x_cells' "
                "(one row per gene)."
            )
    non_numeric = [c for c, t in zip(df.columns, df.dtypes) if not pd.api.types.is_numeric_dtype(t)]
    if non_numeric:
        raise CosmicInputError(
            f"{describe(path, sample)}: column(s) {non_numeric[:5]} hold non-numeric values. A "
            "counts table has labels in the first row and first column and numbers elsewhere; "
            "remove annotation columns."
        )
    values = df.to_numpy(dtype=np.float64)
    if orientation == "cells_x_genes":
        barcodes, genes = df.index, df.columns
    else:
        barcodes, genes, values = df.columns, df.index, values.T
    def unnamed_to_none(labels):
        return pd.Index([None if isinstance(x, str) and (x == "" or _UNNAMED_RE.match(x)) else x
                         for x in labels], dtype=object)

    genes, barcodes = unnamed_to_none(genes), unnamed_to_none(barcodes)
    adata = anndata.AnnData(X=values)  # validated (NaN, negatives) before conversion to sparse
    adata.obs_names = barcodes
    adata.var_names = genes
    adata.uns["counts_orientation"] = orientation
    return adata
