"""The RNA stage's QC figure: counts, genes and mitochondrial fraction per cell, thresholds drawn."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scanpy as sc

from ..plotting import save_figure
from .process import MITO_PREFIXES, RnaParams


def plot_qc(adata: anndata.AnnData, path, params: RnaParams | None = None,
            dropped: pd.DataFrame | None = None) -> None:
    """Histograms of total counts, genes per cell and mito fraction, thresholds drawn.

    Works on a processed object (thresholds from ``uns["cosmic_rna"]`` unless ``params`` is
    given) or on raw counts (QC metrics computed on a copy). With ``dropped`` (the table from
    :func:`process_counts`) the removed cells are stacked on the kept ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if params is None:
        stored = adata.uns.get("cosmic_rna", {}).get("params")
        params = RnaParams.from_config(stored) if stored is not None else RnaParams()
    obs = adata.obs
    if not {"total_counts", "n_genes_by_counts", "pct_counts_mt"} <= set(obs.columns):
        tmp = anndata.AnnData(X=adata.layers["counts"] if "counts" in adata.layers else adata.X,
                              obs=pd.DataFrame(index=adata.obs_names),
                              var=pd.DataFrame(index=adata.var_names))
        tmp.var["mt"] = tmp.var_names.str.startswith(MITO_PREFIXES)
        obs, _ = sc.pp.calculate_qc_metrics(tmp, qc_vars=["mt"], percent_top=None, log1p=False)
    kept = {
        "total_counts": obs["total_counts"].to_numpy(float),
        "n_genes_by_counts": obs["n_genes_by_counts"].to_numpy(float),
        "mito_fraction": (obs["pct_counts_mt"].to_numpy(float) / 100.0),
    }
    panels = [
        ("total_counts", "Total counts per cell", "total UMI counts",
         [("min_counts", params.min_counts), ("max_counts", params.max_counts)]),
        ("n_genes_by_counts", "Genes detected per cell", "genes with counts > 0",
         [("min_genes", params.min_genes)]),
        ("mito_fraction", "Mitochondrial fraction", "fraction of counts from MT- genes",
         [("max_mito_fraction", params.max_mito_fraction)]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, title, xlabel, thresholds) in zip(axes, panels):
        data = [np.nan_to_num(kept[col])]
        labels = ["kept"]
        if dropped is not None and len(dropped):
            data.append(np.nan_to_num(dropped[col].to_numpy(float)))
            labels.append("dropped")
        ax.hist(data, bins=50, stacked=True, label=labels, color=["#4c72b0", "#dd8452"][: len(data)])
        for key, value in thresholds:
            if value is not None:
                ax.axvline(value, color="crimson", linestyle="--", linewidth=1.2, label=f"{key} = {value:g}")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cells")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
