"""The RNA stage's processing: QC-filter cells, normalise, flag highly variable genes, run PCA.

Processing is scanpy's (``calculate_qc_metrics``, ``filter_genes``, ``normalize_total``,
``log1p``, ``highly_variable_genes``, ``pca``); this module adds the parameters' checks and a
per-cell report of what QC dropped and why.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import anndata
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from ..errors import CosmicDataWarning, CosmicInputError, describe

HVG_FLAVORS = ("seurat", "cell_ranger", "seurat_v3")
MITO_PREFIXES = ("MT-", "mt-")
CELL_FILTERS = ("min_genes", "min_counts", "max_counts", "max_mito_fraction")


@dataclasses.dataclass(frozen=True)
class RnaParams:
    """Parameters of the RNA stage (config block ``rna:``)."""

    min_genes: int = 200
    min_counts: int = 500
    max_counts: int | None = None
    max_mito_fraction: float = 0.2
    min_cells: int = 3
    n_top_genes: int = 2000
    hvg_flavor: str = "seurat"
    target_sum: float = 1e4
    n_pcs: int = 30
    max_fit_cells: int = 20000  # used by the `cohort` rule (cosmic.pairing.build_cohort_from_files)
    seed: int = 0
    gene_symbol_column: str | None = None  # var column holding symbols when var_names are IDs
    library_size_key: str | None = None  # obs column of whole-transcriptome library sizes (gene-panel data)

    def __post_init__(self):
        def fail(key, want):
            raise CosmicInputError(
                f"config key rna.{key}: got {getattr(self, key)!r}; expected {want}."
            )

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        for key in ("min_genes", "min_counts", "min_cells", "max_fit_cells", "seed"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 0:
                fail(key, "an integer >= 0")
        for key in ("n_top_genes", "n_pcs"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                fail(key, "an integer >= 1")
        if self.max_counts is not None and (not is_num(self.max_counts) or self.max_counts <= 0):
            fail("max_counts", "null (no upper limit) or a number > 0")
        if not is_num(self.max_mito_fraction) or not 0 <= self.max_mito_fraction <= 1:
            fail("max_mito_fraction", "a fraction between 0 and 1 (1 disables the filter)")
        if not is_num(self.target_sum) or self.target_sum <= 0:
            fail("target_sum", "a number > 0")
        if self.hvg_flavor not in HVG_FLAVORS:
            fail("hvg_flavor", f"one of {list(HVG_FLAVORS)}")

    @classmethod
    def from_config(cls, mapping: Mapping | None) -> RnaParams:
        """Build from the config's ``rna:`` mapping; unknown keys are an error."""
        from ..config import params_from_config

        return params_from_config(cls, "rna", mapping)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Processing
# ---------------------------------------------------------------------------------------------

def use_gene_symbols(adata: anndata.AnnData, column: str, where: str = "RNA counts") -> anndata.AnnData:
    """Replace IDs in ``var_names`` by the symbols of ``var[column]`` (IDs kept in ``var["gene_ids"]``)."""
    if column not in adata.var:
        raise CosmicInputError(f"{where}: rna.gene_symbol_column '{column}' is not a var column; "
                               f"var has {list(adata.var.columns)}.")
    symbols = adata.var[column].astype(str)
    missing = symbols.isin(["", "nan", "None"])
    adata.var["gene_ids"] = adata.var_names.astype(str)
    adata.var_names = pd.Index(np.where(missing, adata.var_names.astype(str), symbols), dtype=object)
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    return adata


def _counts_copy(adata: anndata.AnnData, where: str) -> anndata.AnnData:
    """A copy whose ``X`` holds the raw counts (``layers["counts"]`` when present) as float32 CSR."""
    adata = adata.copy()
    if "counts" in adata.layers:
        adata.X = adata.layers["counts"].copy()
    adata.X = adata.X.tocsr().astype(np.float32) if sp.issparse(adata.X) else sp.csr_matrix(
        np.asarray(adata.X, dtype=np.float32))
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CosmicInputError(f"{where}: no cells or no genes to process ({adata.shape}).")
    return adata


def _add_qc_metrics(adata: anndata.AnnData, params: RnaParams, where: str) -> None:
    """Per-cell QC metrics in ``obs`` (scanpy's, plus ``mito_fraction``) and ``var["mt"]``."""
    adata.var["mt"] = adata.var_names.str.startswith(MITO_PREFIXES)
    if not adata.var["mt"].any() and params.max_mito_fraction < 1:
        warnings.warn(
            f"{where}: no mitochondrial genes (names starting with 'MT-' or 'mt-'); the "
            "rna.max_mito_fraction filter has no effect.",
            CosmicDataWarning,
            stacklevel=3,
        )
    # Per-cell metrics only: per-gene ones would describe cells that QC then drops
    # (filter_genes adds var["n_cells"] on the kept cells).
    cell_qc, _ = sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False)
    for col in cell_qc.columns:
        adata.obs[col] = cell_qc[col]
    obs = adata.obs
    obs["mito_fraction"] = (obs["pct_counts_mt"] / 100.0).fillna(0.0)


def _failed_filters(obs: pd.DataFrame, params: RnaParams) -> pd.DataFrame:
    """One bool column per filter of :data:`CELL_FILTERS`: True where the cell fails it."""
    ng, tc, mf = obs["n_genes_by_counts"], obs["total_counts"], obs["mito_fraction"]
    no_limit = pd.Series(False, index=obs.index)
    return pd.DataFrame({
        "min_genes": ng < params.min_genes,
        "min_counts": tc < params.min_counts,
        "max_counts": tc > params.max_counts if params.max_counts is not None else no_limit,
        "max_mito_fraction": mf > params.max_mito_fraction,
    })


def _dropped_cells(fails: pd.DataFrame, obs: pd.DataFrame, params: RnaParams, sample) -> pd.DataFrame:
    """One row per dropped cell: the failed filters (``reason``), values against thresholds, QC metrics."""
    dropped_mask = fails.any(axis=1).to_numpy()
    sub, d_obs = fails[dropped_mask], obs[dropped_mask]
    # Human-readable values against thresholds, built for the dropped cells only.
    details = {
        "min_genes": d_obs["n_genes_by_counts"].map(lambda v: f"{int(v)} genes < {params.min_genes}"),
        "min_counts": d_obs["total_counts"].map(lambda v: f"{v:g} counts < {params.min_counts}"),
        "max_counts": d_obs["total_counts"].map(lambda v: f"{v:g} counts > {params.max_counts}"),
        "max_mito_fraction": d_obs["mito_fraction"].map(
            lambda v: f"mito fraction {v:.3f} > {params.max_mito_fraction}"),
    }
    reason = pd.Series("", index=sub.index)
    detail = pd.Series("", index=sub.index)
    for key in CELL_FILTERS:
        hit = sub[key]
        sep_r = np.where(reason == "", "", ";")
        sep_d = np.where(detail == "", "", "; ")
        reason = reason.where(~hit, reason + sep_r + key)
        detail = detail.where(~hit, detail + sep_d + details[key])
    dropped = pd.DataFrame({
        "barcode": sub.index.astype(str),
        "reason": reason.to_numpy(),
        "detail": detail.to_numpy(),
        "total_counts": d_obs["total_counts"].to_numpy(),
        "n_genes_by_counts": d_obs["n_genes_by_counts"].to_numpy(),
        "mito_fraction": d_obs["mito_fraction"].to_numpy(),
    })
    if sample is not None:
        dropped.insert(0, "sample", sample)
    return dropped


def _fail_if_no_cell_passes(fails: pd.DataFrame, obs: pd.DataFrame, where: str) -> None:
    """Raise, naming the filters that removed the cells, when QC drops every cell."""
    if not fails.any(axis=1).all():
        return
    n_in = len(obs)
    ng, tc, mf = obs["n_genes_by_counts"], obs["total_counts"], obs["mito_fraction"]
    counts = {k: int(fails[k].sum()) for k in CELL_FILTERS if fails[k].any()}
    parts = [f"{k} removed {v} of {n_in}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    summary = (f"median genes per cell {ng.median():g}, median counts {tc.median():g}, median "
               f"mito fraction {mf.median():.3f}")
    keys = ", ".join(f"rna.{k}" for k in counts)
    raise CosmicInputError(
        f"{where}: no cells pass QC ({'; '.join(parts)}; {summary}). Relax {keys} in the "
        "config, or check that the counts are the filtered cell matrix."
    )


def _normalise(adata: anndata.AnnData, params: RnaParams, where: str) -> None:
    """Keep the counts in ``layers["counts"]``; ``X`` becomes log1p of counts scaled to ``target_sum``."""
    adata.layers["counts"] = adata.X.copy()
    if params.library_size_key:
        # A gene panel's own total is not the cell's library size; divide by the recorded one.
        if params.library_size_key not in adata.obs:
            raise CosmicInputError(f"{where}: rna.library_size_key '{params.library_size_key}' is not an obs column "
                                   f"of the count matrix; obs has {list(adata.obs.columns)[:20]}.")
        size = pd.to_numeric(adata.obs[params.library_size_key], errors="coerce").to_numpy(np.float64)
        if not np.all(np.isfinite(size)) or np.any(size <= 0):
            raise CosmicInputError(f"{where}: obs['{params.library_size_key}'] must hold positive numbers for "
                                   "every cell (rna.library_size_key).")
        adata.X = sp.csr_matrix(sp.diags((params.target_sum / size).astype(np.float32)) @ adata.X)
    else:
        sc.pp.normalize_total(adata, target_sum=params.target_sum)
    sc.pp.log1p(adata)


def _flag_highly_variable(adata: anndata.AnnData, params: RnaParams, where: str) -> np.ndarray:
    """``var["highly_variable"]`` (every gene when there are at most ``n_top_genes``); returns it."""
    n_top = min(params.n_top_genes, adata.n_vars)
    if n_top >= adata.n_vars:
        adata.var["highly_variable"] = True
    else:
        try:
            if params.hvg_flavor == "seurat_v3":
                sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat_v3", layer="counts")
            else:
                sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor=params.hvg_flavor)
        except ImportError as err:
            raise CosmicInputError(
                f"{where}: rna.hvg_flavor='{params.hvg_flavor}' needs a package that is not "
                f"installed ({err}). Install scikit-misc in the rule's environment or set "
                "rna.hvg_flavor to 'seurat' or 'cell_ranger'."
            ) from err
    return adata.var["highly_variable"].to_numpy(dtype=bool)


def _pca(adata: anndata.AnnData, hvg: np.ndarray, params: RnaParams, where: str) -> int:
    """PCA of the highly variable genes into ``obsm["X_pca"]``; returns the number of components."""
    n_comps = min(params.n_pcs, adata.n_obs - 1, int(hvg.sum()) - 1)
    if n_comps < 1:
        raise CosmicInputError(
            f"{where}: too few cells ({adata.n_obs}) or highly variable genes ({int(hvg.sum())}) "
            "after QC for PCA (need at least 2 of each). Relax the QC thresholds in the rna: "
            "config block."
        )
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", svd_solver="arpack",
              random_state=params.seed)
    return n_comps


def process_counts(adata: anndata.AnnData, params: RnaParams | None = None, sample=None):
    """QC, filter, normalise, flag HVGs and run PCA. Returns ``(processed, dropped_cells)``.

    ``dropped_cells`` has one row per removed cell: ``barcode``, ``reason`` (the failed filters,
    ``;``-separated, named as their config keys), ``detail`` (values against thresholds) and the
    QC metrics. The input object is not modified.
    """
    params = params or RnaParams()
    where = describe(None, sample) if sample is not None else "RNA counts"
    adata = _counts_copy(adata, where)
    n_in = adata.n_obs
    if params.gene_symbol_column:
        use_gene_symbols(adata, params.gene_symbol_column, where)

    _add_qc_metrics(adata, params, where)
    fails = _failed_filters(adata.obs, params)
    dropped = _dropped_cells(fails, adata.obs, params, sample)
    _fail_if_no_cell_passes(fails, adata.obs, where)

    adata = adata[~fails.any(axis=1).to_numpy()].copy()
    sc.pp.filter_genes(adata, min_cells=params.min_cells)
    if adata.n_vars == 0:
        raise CosmicInputError(
            f"{where}: no gene is detected in at least rna.min_cells={params.min_cells} of the "
            f"{adata.n_obs} cells passing QC. Lower rna.min_cells in the config."
        )
    _normalise(adata, params, where)
    hvg = _flag_highly_variable(adata, params, where)
    n_comps = _pca(adata, hvg, params, where)

    if sample is not None:
        adata.obs["sample"] = pd.Categorical([sample] * adata.n_obs)
    adata.uns["cosmic_rna"] = {
        "params": {k: v for k, v in params.to_dict().items() if v is not None},
        "n_cells_input": int(n_in),
        "n_cells_kept": int(adata.n_obs),
        "n_cells_dropped": {k: int(fails[k].sum()) for k in CELL_FILTERS},
        "n_genes_kept": int(adata.n_vars),
        "n_highly_variable": int(hvg.sum()),
        "n_pcs": int(n_comps),
    }
    return adata, dropped
