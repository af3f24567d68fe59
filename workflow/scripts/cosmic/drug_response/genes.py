"""Morphology-associated genes: predicted from morphology by COSMIC and separating resistant cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CosmicInputError
from .params import DrugResponseParams

RANKING = ("morphology_association = max(r2_cosmic, 0) * |cohens_d|: r2_cosmic is the held-out R² of the gene "
           "predicted from morphology (variance_decomposition.tsv, morphology_to_rna); cohens_d is the gene's "
           "standardised mean difference, resistant minus responsive treated cells, on log-normalised expression")

VARIANCE_COLUMNS = ("direction", "feature", "r2_cosmic")
ASSOC_COLUMNS = ["rank", "gene", "r2_cosmic", "pearson_cosmic", "r2_ridge", "cohens_d", "logfoldchange",
                 "pval_adj", "significant", "direction", "morphology_association"]


def read_variance_table(variance) -> pd.DataFrame:
    """The ``morphology_to_rna`` rows of ``variance_decomposition.tsv`` (path or DataFrame)."""
    if isinstance(variance, pd.DataFrame):
        table, where = variance, "the variance table"
    else:
        if not Path(variance).exists():
            raise CosmicInputError(f"drug_response: variance table '{variance}' does not exist; it is written by the "
                                   "cosmic stage (cosmic/variance_decomposition.tsv)")
        table, where = pd.read_csv(variance, sep="\t"), f"file '{variance}'"
    missing = [c for c in VARIANCE_COLUMNS if c not in table.columns]
    if missing:
        raise CosmicInputError(f"drug_response: {where} lacks column(s) {missing} (has {list(table.columns)}); "
                               "regenerate it with the cosmic stage")
    return table[table["direction"] == "morphology_to_rna"].rename(columns={"feature": "gene"})


def morphology_associated_genes(variance: pd.DataFrame, de_response: pd.DataFrame,
                                params: DrugResponseParams) -> pd.DataFrame:
    """Genes predicted from morphology ranked by their link to the resistant state (see :data:`RANKING`).

    ``variance`` comes from :func:`read_variance_table`; ``de_response`` is the resistant-vs-responsive
    DE table (empty when that comparison was skipped: the score is then missing and genes are
    ordered by ``r2_cosmic`` alone).
    """
    genes = variance.drop_duplicates("gene").copy()
    for col in ("pearson_cosmic", "r2_ridge"):
        if col not in genes:
            genes[col] = np.nan
    de = de_response[["gene", "cohens_d", "logfoldchange", "pval_adj", "significant"]] if len(de_response) else \
        pd.DataFrame(columns=["gene", "cohens_d", "logfoldchange", "pval_adj", "significant"])
    table = genes[["gene", "r2_cosmic", "pearson_cosmic", "r2_ridge"]].merge(de, on="gene", how="left")
    d = pd.to_numeric(table["cohens_d"], errors="coerce")
    table["direction"] = np.where(d > 0, f"up in {params.resistant}",
                                  np.where(d < 0, f"down in {params.resistant}", ""))
    table["morphology_association"] = table["r2_cosmic"].clip(lower=0) * d.abs()
    table = table.sort_values(["morphology_association", "r2_cosmic"], ascending=False, na_position="last")
    table["rank"] = np.arange(1, len(table) + 1)
    return table[ASSOC_COLUMNS].reset_index(drop=True)
