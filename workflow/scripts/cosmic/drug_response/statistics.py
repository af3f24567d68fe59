"""Per-comparison statistics: Wilcoxon differential expression, morphology tests and effect sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .comparisons import Comparison
from .params import MIN_CELLS, DrugResponseParams


MOMENT_CHUNK_VALUES = 2 ** 22  # stored values made float64 at a time by _group_moments


def _group_moments(X, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean, unbiased variance and fraction of non-zero values of the rows in ``mask``; a sparse
    ``X`` is walked a chunk of rows at a time (no copy of the group's rows)."""
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        total, squares, nonzero = (np.zeros(X.shape[1]) for _ in range(3))
        rows = max(1, int(MOMENT_CHUNK_VALUES // max(1.0, X.nnz / max(1, X.shape[0]))))
        for start in range(0, X.shape[0], rows):
            block = X[start:start + rows][mask[start:start + rows]]
            data = block.data.astype(np.float64)
            total += np.bincount(block.indices, weights=data, minlength=X.shape[1])
            squares += np.bincount(block.indices, weights=data ** 2, minlength=X.shape[1])
            nonzero += np.bincount(block.indices, weights=(data != 0).astype(np.float64), minlength=X.shape[1])
        mean, sq, nonzero = total / max(n, 1), squares / max(n, 1), nonzero / max(n, 1)
    else:
        sub = np.asarray(X[mask], dtype=np.float64)
        mean, sq, nonzero = sub.mean(axis=0), (sub ** 2).mean(axis=0), (sub != 0).mean(axis=0)
    var = np.clip(sq - mean ** 2, 0, None) * n / max(n - 1, 1)
    return mean, var, nonzero


def cohens_d(mean_a, var_a, n_a, mean_b, var_b, n_b) -> np.ndarray:
    """Standardised mean difference ``(mean_a - mean_b) / pooled sd``; 0 where both groups are constant."""
    pooled = np.sqrt(((n_a - 1) * np.asarray(var_a) + (n_b - 1) * np.asarray(var_b)) / max(n_a + n_b - 2, 1))
    diff = np.asarray(mean_a) - np.asarray(mean_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, diff / pooled, 0.0)
    return d


DE_COLUMNS = ["gene", "comparison", "group", "reference", "score", "logfoldchange", "pval", "pval_adj",
              "significant", "mean_group", "mean_reference", "cohens_d", "pct_group", "pct_reference"]


def differential_expression(adata, comp: Comparison, params: DrugResponseParams) -> pd.DataFrame:
    """Wilcoxon rank-sum test of every gene (scanpy), group vs reference, as a tidy table.

    ``score`` is scanpy's z statistic (positive: higher in the group), ``logfoldchange`` its log2
    fold change of the de-logged means, ``pval_adj`` Benjamini-Hochberg over genes.
    """
    import anndata as ad
    import scanpy as sc

    if comp.skipped:
        return pd.DataFrame(columns=DE_COLUMNS)
    # every cell compared (treated vs control): the cohort's matrix itself, not a copy
    X = adata.X if comp.cells.all() else adata.X[comp.cells]
    labels = np.where(comp.is_group, "group", "reference")
    sub = ad.AnnData(X=X, obs=pd.DataFrame({"_group": pd.Categorical(labels, ["group", "reference"])},
                                           index=adata.obs_names[comp.cells]),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    sub.uns["log1p"] = dict(adata.uns.get("log1p", {"base": None}))
    sc.tl.rank_genes_groups(sub, "_group", groups=["group"], reference="reference", method="wilcoxon",
                            corr_method="benjamini-hochberg", tie_correct=True, use_raw=False)
    res = sc.get.rank_genes_groups_df(sub, group="group")
    res = res.rename(columns={"names": "gene", "scores": "score", "logfoldchanges": "logfoldchange",
                              "pvals": "pval", "pvals_adj": "pval_adj"})
    n_g, n_r = int(comp.is_group.sum()), int((~comp.is_group).sum())
    m_g, v_g, nz_g = _group_moments(X, comp.is_group)
    m_r, v_r, nz_r = _group_moments(X, ~comp.is_group)
    stats = pd.DataFrame({"mean_group": m_g, "mean_reference": m_r, "cohens_d": cohens_d(m_g, v_g, n_g, m_r, v_r, n_r),
                          "pct_group": nz_g, "pct_reference": nz_r}, index=sub.var_names)
    res = res.join(stats, on="gene")
    res["comparison"], res["group"], res["reference"] = comp.name, comp.group, comp.reference
    res["significant"] = res["pval_adj"] < params.fdr
    # most significant first; ties (e.g. p values that underflow to 0) by |z|
    res = res.iloc[np.lexsort((-res["score"].abs().to_numpy(), res["pval_adj"].to_numpy()))]
    return res[DE_COLUMNS].reset_index(drop=True)


MORPH_COLUMNS = ["comparison", "feature", "group", "reference", "n_group", "n_reference", "median_group",
                 "median_reference", "mean_group", "mean_reference", "cohens_d", "auc", "rank_biserial",
                 "u_statistic", "pval", "qval", "significant"]


def morphology_tests(features: np.ndarray, names, is_group: np.ndarray, params: DrugResponseParams,
                     comparison: str = "", group: str = "group", reference: str = "reference") -> pd.DataFrame:
    """Per-feature two-sided Mann-Whitney U test, BH FDR over features, and effect sizes.

    ``auc`` is ``U / (n_group n_reference)``, the probability that a group cell exceeds a
    reference cell (ties count half); ``rank_biserial = 2 auc - 1``; ``cohens_d`` uses the pooled SD.
    Non-finite values are left out feature by feature.
    """
    from scipy.stats import false_discovery_control, mannwhitneyu

    features = np.asarray(features, dtype=np.float64)
    rows = []
    for j, name in enumerate(names):
        x = features[:, j]
        a, b = x[is_group & np.isfinite(x)], x[~is_group & np.isfinite(x)]
        row = dict(comparison=comparison, feature=str(name), group=group, reference=reference,
                   n_group=len(a), n_reference=len(b))
        if min(len(a), len(b)) < MIN_CELLS:
            rows.append(row)
            continue
        test = mannwhitneyu(a, b, alternative="two-sided")
        auc = float(test.statistic) / (len(a) * len(b))
        row.update(median_group=float(np.median(a)), median_reference=float(np.median(b)),
                   mean_group=float(a.mean()), mean_reference=float(b.mean()),
                   cohens_d=float(cohens_d(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b))),
                   auc=auc, rank_biserial=2 * auc - 1, u_statistic=float(test.statistic), pval=float(test.pvalue))
        rows.append(row)
    table = pd.DataFrame(rows, columns=MORPH_COLUMNS)
    p = table["pval"].to_numpy(dtype=float)
    ok = np.isfinite(p)
    q = np.full(len(p), np.nan)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    table["qval"] = q
    table["significant"] = table["qval"] < params.fdr
    return table
