"""Per-comparison statistics: Wilcoxon differential expression, morphology tests and effect sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..cohort_io import matrix_blocks
from ..splits import subset_indices
from .comparisons import Comparison
from .params import MIN_CELLS, DrugResponseParams


MOMENT_CHUNK_VALUES = 2 ** 22  # stored values made float64 at a time by group_moments


def group_moments(blocks, masks: list[np.ndarray], n_columns: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per column, the mean, unbiased variance and fraction of non-zero values of the rows in each mask
    (bool over all rows), from ``(start, stop, block)`` row blocks of a sparse or dense matrix: one
    pass, memory of one block."""
    sums = [[np.zeros(n_columns) for _ in range(3)] for _ in masks]
    for start, stop, block in blocks:
        for (total, squares, nonzero), mask in zip(sums, masks):
            part = block[np.asarray(mask[start:stop], dtype=bool)]
            if sp.issparse(part):
                part = sp.csr_matrix(part)
                data, columns = part.data.astype(np.float64), part.indices
                total += np.bincount(columns, weights=data, minlength=n_columns)
                squares += np.bincount(columns, weights=data ** 2, minlength=n_columns)
                nonzero += np.bincount(columns, weights=(data != 0).astype(np.float64), minlength=n_columns)
            else:
                part = np.asarray(part, dtype=np.float64)
                total += part.sum(0)
                squares += (part ** 2).sum(0)
                nonzero += (part != 0).sum(0)
    out = []
    for (total, squares, nonzero), mask in zip(sums, masks):
        n = int(np.asarray(mask, dtype=bool).sum())
        mean, sq = total / max(n, 1), squares / max(n, 1)
        out.append((mean, np.clip(sq - mean ** 2, 0, None) * n / max(n - 1, 1), nonzero / max(n, 1)))
    return out


def _group_moments(X, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean, unbiased variance and fraction of non-zero values of the rows in ``mask``."""
    return group_moments(matrix_blocks(X, MOMENT_CHUNK_VALUES), [np.asarray(mask, dtype=bool)], X.shape[1])[0]


def tested_cells(is_group: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Positions (ascending) of the compared cells in the rank-sum test: every cell, or of a group larger
    than ``max_cells`` (> 0) a seeded random subset of that many."""
    rng = np.random.default_rng(seed)
    picked = []
    for members in (np.flatnonzero(is_group), np.flatnonzero(~is_group)):
        if max_cells > 0:
            members = members[subset_indices(len(members), max_cells, rng)]
        picked.append(members)
    return np.sort(np.concatenate(picked))


def cohens_d(mean_a, var_a, n_a, mean_b, var_b, n_b) -> np.ndarray:
    """Standardised mean difference ``(mean_a - mean_b) / pooled sd``; 0 where both groups are constant."""
    pooled = np.sqrt(((n_a - 1) * np.asarray(var_a) + (n_b - 1) * np.asarray(var_b)) / max(n_a + n_b - 2, 1))
    diff = np.asarray(mean_a) - np.asarray(mean_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, diff / pooled, 0.0)
    return d


DE_COLUMNS = ["gene", "comparison", "group", "reference", "score", "logfoldchange", "pval", "pval_adj",
              "significant", "mean_group", "mean_reference", "cohens_d", "pct_group", "pct_reference"]


def differential_expression(adata, comp: Comparison, params: DrugResponseParams, source=None) -> pd.DataFrame:
    """Wilcoxon rank-sum test of every gene (scanpy), group vs reference, as a tidy table.

    ``score`` is scanpy's z statistic (positive: higher in the group), ``logfoldchange`` its log2
    fold change of the de-logged means, ``pval_adj`` Benjamini-Hochberg over genes. The test reads at
    most ``params.max_de_cells`` cells per group (:func:`tested_cells`; ``comp.wilcoxon_cells`` records
    a subset); means, Cohen's d and detection rates use every compared cell. ``source``: the h5ad file
    holding the cohort's ``X`` (then ``adata`` may hold only annotations): its rows are read from disk.
    """
    import anndata as ad
    import scanpy as sc

    from ..cohort_io import read_rows, row_blocks

    if comp.skipped:
        return pd.DataFrame(columns=DE_COLUMNS)
    rows = np.flatnonzero(comp.cells)
    tested = tested_cells(comp.is_group, params.max_de_cells, params.seed)
    if len(tested) < len(rows):
        comp.wilcoxon_cells = dict(group=int(comp.is_group[tested].sum()), reference=int((~comp.is_group[tested]).sum()),
                                   note=f"a seeded random subset of at most {params.max_de_cells} cells per group "
                                        "(drug_response.max_de_cells)")
    if source is not None:
        X = read_rows(source, rows[tested])
    else:  # every cell compared (treated vs control): the cohort's matrix itself, not a copy
        X = adata.X if len(tested) == adata.n_obs else adata.X[rows[tested]]
    labels = np.where(comp.is_group[tested], "group", "reference")
    sub = ad.AnnData(X=X, obs=pd.DataFrame({"_group": pd.Categorical(labels, ["group", "reference"])},
                                           index=adata.obs_names[rows[tested]]),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    sub.uns["log1p"] = dict(adata.uns.get("log1p", {"base": None}))
    sc.tl.rank_genes_groups(sub, "_group", groups=["group"], reference="reference", method="wilcoxon",
                            corr_method="benjamini-hochberg", tie_correct=True, use_raw=False)
    res = sc.get.rank_genes_groups_df(sub, group="group")
    del sub, X
    res = res.rename(columns={"names": "gene", "scores": "score", "logfoldchanges": "logfoldchange",
                              "pvals": "pval", "pvals_adj": "pval_adj"})
    n_g, n_r = int(comp.is_group.sum()), int((~comp.is_group).sum())
    in_group, in_reference = np.zeros(adata.n_obs, bool), np.zeros(adata.n_obs, bool)
    in_group[rows[comp.is_group]], in_reference[rows[~comp.is_group]] = True, True
    blocks = row_blocks(source) if source is not None else matrix_blocks(adata.X, MOMENT_CHUNK_VALUES)
    (m_g, v_g, nz_g), (m_r, v_r, nz_r) = group_moments(blocks, [in_group, in_reference], adata.n_vars)
    stats = pd.DataFrame({"mean_group": m_g, "mean_reference": m_r, "cohens_d": cohens_d(m_g, v_g, n_g, m_r, v_r, n_r),
                          "pct_group": nz_g, "pct_reference": nz_r}, index=adata.var_names.astype(str))
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
