"""External transcriptomic embeddings (scGPT, Geneformer, UCE, scVI, ...) keyed by barcode."""

from __future__ import annotations

import re
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import CosmicInputError, describe
from .readers import _strip_compression


def _npy_barcodes(path: Path) -> Path | None:
    stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.stem
    for ext in (".barcodes.tsv", ".barcodes.txt"):
        cand = path.with_name(stem + ext)
        if cand.is_file():
            return cand
    return None


def read_embedding(path, key=None, sample=None) -> pd.DataFrame:
    """Read an external embedding as a DataFrame indexed by barcode (rows) x dimensions."""
    path = Path(path)
    where = describe(path, sample)
    if not path.is_file():
        raise CosmicInputError(f"{where}: embedding file not found; fix its path in the config.")
    name = _strip_compression(path.name.lower())
    if name.endswith(".h5ad"):
        src = anndata.read_h5ad(path)
        if key is None:
            keys = list(src.obsm.keys())
            if len(keys) == 1:
                key = keys[0]
            elif not keys:
                values = src.X
            else:
                raise CosmicInputError(
                    f"{where}: several embeddings in obsm {keys}; name the one to use (its "
                    "'key' in the config)."
                )
        if key is not None:
            if key not in src.obsm:
                raise CosmicInputError(
                    f"{where}: no obsm[{key!r}] (available: {list(src.obsm.keys())}); fix the "
                    "embedding 'key' in the config."
                )
            values = src.obsm[key]
        if isinstance(values, pd.DataFrame):
            values = values.to_numpy()
        values = values.toarray() if sp.issparse(values) else np.asarray(values)
        barcodes = src.obs_names
    elif name.endswith(".npy"):
        bc_file = _npy_barcodes(path)
        if bc_file is None:
            stem = path.name[: -len(".npy")]
            raise CosmicInputError(
                f"{where}: a .npy embedding needs its barcodes beside it, one per line, in "
                f"'{stem}.barcodes.tsv' or '{stem}.barcodes.txt' (row i of the array = line i)."
            )
        values = np.load(path, mmap_mode="r")
        barcodes = pd.read_csv(bc_file, header=None, sep="\t", dtype=str,
                               keep_default_na=False)[0]
        if values.ndim != 2 or values.shape[0] != len(barcodes):
            raise CosmicInputError(
                f"{where}: array of shape {values.shape} does not match the {len(barcodes)} "
                f"barcodes in '{bc_file.name}'; expected a 2-D array with one row per barcode."
            )
    elif name.endswith((".csv", ".tsv", ".txt")):
        df = pd.read_csv(path, sep="," if name.endswith(".csv") else "\t", index_col=0)
        non_numeric = [c for c, t in zip(df.columns, df.dtypes) if not pd.api.types.is_numeric_dtype(t)]
        if non_numeric or df.shape[1] == 0:
            raise CosmicInputError(
                f"{where}: expected the barcode in the first column and numbers in the others "
                f"(non-numeric columns: {non_numeric[:5]})."
            )
        values, barcodes = df.to_numpy(), df.index
    else:
        raise CosmicInputError(
            f"{where}: unsupported embedding file; use .h5ad (obsm[key]), .npy with a "
            "'<stem>.barcodes.tsv' file beside it, or .csv/.tsv (barcode, then one column per "
            "dimension)."
        )
    barcodes = pd.Index(pd.Index(barcodes).astype(str))
    if not barcodes.is_unique:
        dups = barcodes[barcodes.duplicated()].unique()
        raise CosmicInputError(f"{where}: barcode(s) listed more than once, e.g. {list(dups[:5])}.")
    return pd.DataFrame(np.asarray(values), index=barcodes)


def attach_embedding(adata: anndata.AnnData, path, name: str, key=None, sample=None) -> anndata.AnnData:
    """Store an external embedding as ``adata.obsm[f"X_{name}"]`` in ``adata``'s cell order.

    Every barcode of ``adata`` must be in the file; extra barcodes are ignored. Modifies and
    returns ``adata``.
    """
    where = describe(path, sample)
    if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
        raise CosmicInputError(f"{where}: embedding name {name!r} must be letters, digits or '_'.")
    emb = read_embedding(path, key=key, sample=sample)
    wanted = pd.Index(adata.obs_names.astype(str))
    missing = wanted.difference(emb.index, sort=False)
    if len(missing):
        raise CosmicInputError(
            f"{where}: {len(missing)} of {len(wanted)} cells have no row in the '{name}' "
            f"embedding (e.g. {list(missing[:5])}; the file's barcodes look like "
            f"{list(emb.index[:3])}). Embed all cells passing QC, with the same barcodes as the "
            "counts file."
        )
    values = emb.loc[wanted].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = wanted[bad.any(axis=1)]
        raise CosmicInputError(
            f"{where}: the '{name}' embedding has {int(bad.sum())} NaN/infinite value(s) for "
            f"{len(rows)} cell(s) (e.g. {list(rows[:5])}); recompute it for those cells."
        )
    adata.obsm[f"X_{name}"] = values.astype(np.float32)
    return adata
