"""Checks of a freshly read count matrix, with messages naming the file, the sample and the fix."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import CosmicDataWarning, CosmicInputError, describe


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X)


def _bad_name(name) -> bool:
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return True
    text = str(name).strip()
    return text == "" or text.lower() in ("nan", "none")


def _check_values(adata: anndata.AnnData, where: str) -> None:
    """Counts are finite, non-negative integers, not all zero, in a non-empty matrix."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CosmicInputError(
            f"{where}: the count matrix is empty ({adata.n_obs} cells x {adata.n_vars} genes). "
            "Point the sample sheet 'counts' column at the filtered matrix of a run with cells "
            "(and, for 10x files, Gene Expression features)."
        )
    vals = _values(adata.X)
    if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(vals.dtype, np.complexfloating):
        raise CosmicInputError(f"{where}: counts have dtype {vals.dtype}; expected numbers.")
    if np.issubdtype(vals.dtype, np.floating):
        n_nan = int(np.isnan(vals).sum())
        if n_nan:
            raise CosmicInputError(
                f"{where}: {n_nan} count(s) are NaN. Raw counts have no missing values; write 0 "
                "for undetected genes and re-export the matrix."
            )
        if np.isinf(vals).any():
            raise CosmicInputError(f"{where}: counts contain infinite values; re-export the raw counts.")
    n_neg = int((vals < 0).sum())
    if n_neg:
        raise CosmicInputError(
            f"{where}: {n_neg} count(s) are negative (minimum {vals.min():g}). Provide raw UMI "
            "counts, not scaled, centred or batch-corrected values."
        )
    if np.issubdtype(vals.dtype, np.floating):
        frac = np.abs(vals - np.rint(vals)) > 1e-6
        if frac.any():
            example = vals[frac][:3].tolist()
            src = adata.uns.get("counts_source")
            hint = (" (no layers['counts'] in the h5ad, so X was read; store the raw counts in "
                    "layers['counts'])" if src == "X" else "")
            raise CosmicInputError(
                f"{where}: {int(frac.sum())} count(s) are not integers (e.g. {example}){hint}. "
                "Provide raw UMI counts, not normalised, log-transformed or ambient-corrected "
                "values."
            )
    if vals.size == 0 or not np.any(vals):
        raise CosmicInputError(
            f"{where}: the count matrix is empty (all {adata.n_obs} x {adata.n_vars} counts are "
            "zero). Point the sample sheet 'counts' column at the raw counts."
        )


def _checked_barcodes(adata: anndata.AnnData, where: str) -> pd.Index:
    """The barcodes as strings, once every gene is named and every barcode is present and unique."""
    bad = [i for i, n in enumerate(adata.var_names) if _bad_name(n)]
    if bad:
        raise CosmicInputError(
            f"{where}: {len(bad)} gene(s) have a missing or empty name (positions {bad[:5]}). "
            "Every gene needs a symbol (or an ID): fill the gene name column of the features file "
            "or the gene labels of the table."
        )
    obs_names = pd.Index(adata.obs_names.astype(str))
    if any(_bad_name(b) for b in obs_names):
        raise CosmicInputError(f"{where}: some barcodes are missing or empty; every cell needs a barcode.")
    if not obs_names.is_unique:
        dups = obs_names[obs_names.duplicated()].unique()
        raise CosmicInputError(
            f"{where}: {len(dups)} barcode(s) occur more than once (e.g. {list(dups[:5])}). Each "
            "cell must have one row; if the file merges several libraries, make barcodes unique "
            "(e.g. with a library suffix '-1', '-2') or split it into one sample per library."
        )
    return obs_names


def validate_counts(adata: anndata.AnnData, path, sample) -> anndata.AnnData:
    """Check a freshly read count matrix; return it with float32 CSR ``X`` and unique gene names.

    Raises :class:`CosmicInputError` for unusable values or names; repeated gene symbols are
    made unique with a warning.
    """
    where = describe(path, sample)
    _check_values(adata, where)
    obs_names = _checked_barcodes(adata, where)

    X = adata.X
    X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    X = X.astype(np.float32)
    X.eliminate_zeros()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique.*")
        out = anndata.AnnData(X=X, obs=adata.obs.copy(), var=adata.var.copy())
    out.obs_names = obs_names
    out.var_names = pd.Index(adata.var_names.astype(str))
    if not out.var_names.is_unique:
        dups = out.var_names[out.var_names.duplicated()].unique()
        warnings.warn(
            f"{where}: {len(dups)} gene symbol(s) occur more than once (e.g. {list(dups[:5])}); "
            "made unique by appending '-1', '-2', ... (gene IDs, where present, are kept in "
            "var['gene_ids']).",
            CosmicDataWarning,
            stacklevel=3,
        )
        out.var_names_make_unique()
    for key in ("counts_orientation",):
        if key in adata.uns:
            out.uns[key] = adata.uns[key]
    return out
