"""Drug response: treated vs untreated and resistant vs responsive cells, in both modalities.

Two comparisons are made on the paired cohort (``paired/cohort.h5ad``):

``treatment``
    treated cells (``obs[treatment_key] != control``) against control cells, all cells;
``response``
    ``resistant`` against ``responsive`` cells, treated cells only (``obs[response_key]``).

A comparison without two groups of at least :data:`MIN_CELLS` cells (for example a
sample-level response such as ``mixed``, or a cohort without control cells) is skipped and
the reason is recorded in ``summary.json``; its tables are written empty and its figure panels
say "not available: <reason>". A missing treatment column is an input error; a missing
response column only skips the ``response`` comparison.

For each comparison (the tested group against the reference):

* differential expression: scanpy's Wilcoxon rank-sum test (``sc.tl.rank_genes_groups``) on
  the log-normalised ``X`` with Benjamini-Hochberg adjusted p values and log2 fold changes,
  plus group means and Cohen's d on the log-normalised scale;
* morphology: per region-property feature (``obsm["X_morph"]``) a two-sided Mann-Whitney U
  test, BH FDR over features, Cohen's d, the AUC ``P(group > reference)`` and the
  rank-biserial correlation ``2 AUC - 1``;
* classifiers: standardised, class-balanced logistic regression, stratified k-fold; ROC AUC
  and balanced accuracy of held-out predictions only, from the RNA embedding (``X_rna``),
  the region-property features (``X_morph``), the foundation embedding (``X_fm``, when
  present) and RNA + region properties.

Morphology-associated genes: genes ranked by ``max(r2_cosmic, 0) * |d|``, where ``r2_cosmic``
is the held-out R² of the gene's expression predicted from morphology by COSMIC
(``variance_decomposition.tsv``, direction ``morphology_to_rna``) and ``d`` is the gene's
Cohen's d between resistant and responsive treated cells. The product is high only for genes
that morphology predicts *and* that separate the resistant state; Cohen's d (not the log fold
change) keeps lowly expressed genes from dominating. The DE FDR is shown beside the score.

With the demo's ground truth (``results/demo``), :func:`demo_recovery` scores the planted
genes and morphology shifts that the analysis should find.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .atomic import atomic_path, write_json
from .errors import CosmicInputError
from .plotting import _pyplot, not_available, save_figure

log = logging.getLogger(__name__)

MIN_CELLS = 3  # cells per group for a comparison to run
COMPARISONS = ("treatment", "response")
COMPARISON_TITLES = {"treatment": "treated vs control (all cells)",
                     "response": "resistant vs responsive (treated cells)"}
FEATURE_SETS = ("rna", "morphology", "foundation", "rna+morphology")
FEATURE_SET_OBSM = {"rna": ("X_rna",), "morphology": ("X_morph",), "foundation": ("X_fm",),
                    "rna+morphology": ("X_rna", "X_morph")}
TABLES = {"de_treatment": "de_treatment.tsv", "de_response": "de_response.tsv",
          "morphology_tests": "morphology_tests.tsv", "classifiers": "classifiers.tsv",
          "morphology_associated_genes": "morphology_associated_genes.tsv"}
FIGURES = ("volcano.png", "morphology_effects.png", "classifier_auc.png", "morphology_associated_genes.png")
RANKING = ("morphology_association = max(r2_cosmic, 0) * |cohens_d|: r2_cosmic is the held-out R² of the gene "
           "predicted from morphology (variance_decomposition.tsv, morphology_to_rna); cohens_d is the gene's "
           "standardised mean difference, resistant minus responsive treated cells, on log-normalised expression")

# Planted morphology shifts of the demo, per trait of results/demo/morphology_traits.tsv: region-property
# feature and the sign of its shift in drug-affected cells (treated; within treated, responsive).
DEMO_MORPHOLOGY_SHIFTS = {
    "nuclear_area": (("morph_area", 1),),
    "dna_content": (("morph_dna_integrated", 1),),
    "lobulation_and_micronuclei": (("morph_solidity", -1), ("morph_form_factor", -1)),
}


# ---------------------------------------------------------------------------------------
# parameters
@dataclass
class DrugResponseParams:
    """The ``drug_response:`` config block."""

    treatment_key: str = "treatment"  # obs column with the treatment of each cell
    control: str = "control"  # its value for untreated cells
    response_key: str = "response"  # obs column with the per-cell response
    resistant: str = "resistant"  # its value for resistant cells
    responsive: str = "responsive"  # its value for responsive cells
    fdr: float = 0.05  # Benjamini-Hochberg threshold for genes and morphology features
    seed: int = 0  # fold assignment of the classifiers
    cv_folds: int = 5  # stratified folds of the classifiers
    top_n: int = 20  # genes shown / scored as "top"

    def __post_init__(self):
        for name in ("treatment_key", "control", "response_key", "resistant", "responsive"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise CosmicInputError(f"config 'drug_response': {name} must be a non-empty string, got {value!r}")
        if self.resistant == self.responsive:
            raise CosmicInputError("config 'drug_response': resistant and responsive must be different labels, "
                                   f"both are {self.resistant!r}")
        if isinstance(self.fdr, bool) or not isinstance(self.fdr, (int, float)) or not 0 < self.fdr < 1:
            raise CosmicInputError(f"config 'drug_response': fdr must be a number between 0 and 1, got {self.fdr!r}")
        for name, lo in (("seed", 0), ("cv_folds", 2), ("top_n", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise CosmicInputError(f"config 'drug_response': {name} must be an integer >= {lo}, got {value!r}")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "DrugResponseParams":
        """Build from ``config["drug_response"]``; unknown keys are errors naming the allowed ones."""
        from .config import params_from_config

        return params_from_config(cls, "drug_response", mapping, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# comparisons
@dataclass
class Comparison:
    """Cells of one comparison: ``cells`` selects them from the cohort, ``is_group`` splits them."""

    name: str
    title: str
    group: str  # label of the tested group (positive class, numerator of fold changes)
    reference: str
    cells: np.ndarray | None = None  # bool over cohort cells
    is_group: np.ndarray | None = None  # bool over the selected cells
    skipped: str | None = None
    n_group: int = 0
    n_reference: int = 0
    group_samples: list | None = None
    reference_samples: list | None = None

    def describe(self) -> dict:
        out = dict(title=self.title, group=self.group, reference=self.reference, n_group=self.n_group,
                   n_reference=self.n_reference, skipped=self.skipped)
        if self.skipped is None and self.group_samples is not None:
            out.update(group_samples=self.group_samples, reference_samples=self.reference_samples)
            shared = set(self.group_samples) & set(self.reference_samples)
            out["confounded_with_sample"] = not shared
            if not shared:
                out["note"] = ("no sample holds cells of both groups: differences include sample/batch effects "
                               "as well as the biology")
        return out


def _levels(values: pd.Series) -> dict:
    counts = values.astype(object).where(values.notna(), "<missing>").value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def _check_column(obs: pd.DataFrame, key: str, param: str) -> None:
    if key not in obs.columns:
        raise CosmicInputError(
            f"drug_response: the cohort has no obs column '{key}' (drug_response.{param}); obs columns: "
            f"{list(map(str, obs.columns))}. Set drug_response.{param} to one of them, or add the column "
            "(e.g. a 'treatment' column in the sample sheet)."
        )


def define_comparisons(obs: pd.DataFrame, params: DrugResponseParams) -> dict[str, Comparison]:
    """The ``treatment`` and ``response`` comparisons; those lacking groups carry ``skipped``."""
    samples = obs["sample"].astype(str).to_numpy() if "sample" in obs else None
    out = {}

    def finish(comp: Comparison, cells: np.ndarray, is_group_all: np.ndarray, why_empty: str) -> Comparison:
        comp.n_group, comp.n_reference = int((cells & is_group_all).sum()), int((cells & ~is_group_all).sum())
        if min(comp.n_group, comp.n_reference) < MIN_CELLS:
            comp.skipped = (f"{comp.n_group} {comp.group} and {comp.n_reference} {comp.reference} cells "
                            f"(need >= {MIN_CELLS} each); {why_empty}")
            return comp
        comp.cells, comp.is_group = cells, is_group_all[cells]
        if samples is not None:
            comp.group_samples = sorted(set(samples[cells & is_group_all]))
            comp.reference_samples = sorted(set(samples[cells & ~is_group_all]))
        return comp

    if params.treatment_key not in obs.columns:
        # A cohort without a treatment column (e.g. untreated cells only): nothing to compare there;
        # a per-cell response, if any, is compared across all cells.
        comp = Comparison("treatment", COMPARISON_TITLES["treatment"], "treated", params.control)
        comp.skipped = (f"the cohort has no obs column '{params.treatment_key}' (drug_response.treatment_key); "
                        "add a 'treatment' column to the sample sheet or set the key to an obs column")
        out["treatment"] = comp
        is_treated = np.ones(len(obs), dtype=bool)
    else:
        treatment = obs[params.treatment_key]
        known = treatment.notna().to_numpy()
        is_control = known & (treatment.astype(str) == params.control).to_numpy()
        is_treated = known & ~is_control
        treated_levels = sorted(set(treatment[is_treated].astype(str)))
        group = treated_levels[0] if len(treated_levels) == 1 else "treated"
        out["treatment"] = finish(
            Comparison("treatment", COMPARISON_TITLES["treatment"], group, params.control), known, is_treated,
            f"obs['{params.treatment_key}'] levels: {_levels(treatment)}; set drug_response.control to the "
            "untreated level")

    comp = Comparison("response", COMPARISON_TITLES["response"], params.resistant, params.responsive)
    if params.response_key not in obs.columns:
        columns = list(map(str, obs.columns))
        comp.skipped = (f"the cohort has no obs column '{params.response_key}' (drug_response.response_key); "
                        f"obs columns: {columns[:8]}{' ...' if len(columns) > 8 else ''}; a per-cell "
                        "response comes from the sample sheet's 'annotations' table")
        out["response"] = comp
    else:
        response = obs[params.response_key].astype(object)
        labels = response.where(response.notna(), None).astype(str).to_numpy()
        in_pair = np.isin(labels, [params.resistant, params.responsive])
        out["response"] = finish(
            comp, is_treated & in_pair, labels == params.resistant,
            f"obs['{params.response_key}'] levels among treated cells: {_levels(response[is_treated])}; a per-cell "
            f"'{params.resistant}'/'{params.responsive}' label is needed (a sample-level label such as 'mixed' "
            "cannot be compared)")
    for comp in out.values():
        if comp.skipped:
            log.warning("drug_response: comparison '%s' skipped: %s", comp.name, comp.skipped)
    return out


# ---------------------------------------------------------------------------------------
# statistics
def _group_moments(X, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean, unbiased variance and fraction of non-zero values of the rows in ``mask``."""
    sub = X[mask]
    n = sub.shape[0]
    if sp.issparse(sub):
        sub = sp.csr_matrix(sub, dtype=np.float64)
        mean = np.asarray(sub.mean(axis=0)).ravel()
        sq = np.asarray(sub.multiply(sub).mean(axis=0)).ravel()
        nonzero = np.asarray((sub != 0).sum(axis=0)).ravel() / max(n, 1)
    else:
        sub = np.asarray(sub, dtype=np.float64)
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
    X = adata.X[comp.cells]
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


def cross_validated_classifier(X: np.ndarray, y: np.ndarray, params: DrugResponseParams) -> dict:
    """Held-out ROC AUC and balanced accuracy of a standardised logistic regression.

    Median imputation, standardisation and the class-balanced logistic regression are fitted on
    the training folds only (one scikit-learn pipeline); every cell is predicted once, by the
    model of the fold that held it out.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64).copy()
    X[~np.isfinite(X)] = np.nan
    y = np.asarray(y, dtype=bool)
    folds = int(min(params.cv_folds, y.sum(), (~y).sum()))
    if folds < 2:
        return dict(auc=np.nan, balanced_accuracy=np.nan, n_folds=folds, note="fewer than 2 cells in a class")
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegression(max_iter=5000, class_weight="balanced"))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=params.seed)
    proba = cross_val_predict(model, X, y, cv=cv, method="predict_proba")[:, 1]
    return dict(auc=float(roc_auc_score(y, proba)), balanced_accuracy=float(balanced_accuracy_score(y, proba >= 0.5)),
                n_folds=folds, note="")


CLASSIFIER_COLUMNS = ["comparison", "features", "obsm", "n_features", "n_group", "n_reference", "n_folds", "auc",
                      "balanced_accuracy", "note"]


def classifiers(adata, comps: Mapping[str, Comparison], params: DrugResponseParams) -> pd.DataFrame:
    """One row per comparison and feature set (rows of skipped ones carry the reason in ``note``)."""
    rows = []
    for comp in comps.values():
        for fs in FEATURE_SETS:
            keys = FEATURE_SET_OBSM[fs]
            row = dict(comparison=comp.name, features=fs, obsm="+".join(keys), n_group=comp.n_group,
                       n_reference=comp.n_reference)
            missing = [k for k in keys if k not in adata.obsm]
            if comp.skipped:
                row["note"] = f"comparison skipped: {comp.skipped}"
            elif missing:
                row["note"] = f"obsm {missing} not in the cohort"
            else:
                X = np.hstack([np.asarray(adata.obsm[k], dtype=np.float64)[comp.cells] for k in keys])
                row["n_features"] = X.shape[1]
                row.update(cross_validated_classifier(X, comp.is_group, params))
            rows.append(row)
    return pd.DataFrame(rows, columns=CLASSIFIER_COLUMNS)


# ---------------------------------------------------------------------------------------
# morphology-associated genes
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


# ---------------------------------------------------------------------------------------
# demo recovery
def _average_precision(table: pd.DataFrame, planted: set, ranking: np.ndarray) -> float | None:
    """Average precision of the planted genes when all tested genes are ranked by ``ranking`` (high first)."""
    from sklearn.metrics import average_precision_score

    y = table["gene"].isin(planted).to_numpy()
    return float(average_precision_score(y, ranking)) if y.any() else None


def _precision_recall(found: set, planted: set) -> dict:
    hit = found & planted
    return dict(precision=len(hit) / len(found) if found else None, recall=len(hit) / len(planted) if planted else None,
                n_found=len(found), n_planted=len(planted), n_hit=len(hit))


def demo_recovery(truth_dir, de: Mapping[str, pd.DataFrame], morph: pd.DataFrame,
                  comps: Mapping[str, Comparison], params: DrugResponseParams) -> dict:
    """Score the planted genes and morphology shifts of the demo (``results/demo``).

    Genes (``genes.tsv``, program): ``resistance`` genes must be significantly up in resistant
    cells, ``drug_response`` genes up in responsive ones; ``treatment`` and ``drug_response``
    genes are planted between treated and control cells. Precision/recall are over genes that
    were tested; ``top_k`` uses the ``top_n`` genes with the largest Wilcoxon z in the expected
    direction. ``significant_by_program`` shows where the other significant genes come from (cell-
    cycle genes move with the drug's mitotic arrest: biology, not noise). Morphology: each planted
    shift (:data:`DEMO_MORPHOLOGY_SHIFTS`) is recovered when its feature has q < fdr and Cohen's d of
    the expected sign.
    """
    truth_dir = Path(truth_dir)
    path = truth_dir / "genes.tsv"
    if not path.exists():
        raise CosmicInputError(f"drug_response: demo truth file '{path}' does not exist; pass the demo directory "
                               "(results/demo) or no truth")
    genes = pd.read_csv(path, sep="\t")
    if not {"gene", "program"} <= set(genes.columns):
        raise CosmicInputError(f"drug_response: file '{path}' needs columns 'gene' and 'program'")
    program = dict(zip(genes["gene"].astype(str), genes["program"].astype(str)))
    k = params.top_n
    out: dict[str, Any] = {"fdr": params.fdr, "top_k": k}

    def planted(table, programs):
        return {g for g in table["gene"] if program.get(g) in programs}

    def by_program(table):
        return {str(p): int(n) for p, n in pd.Series([program.get(g, "unknown") for g in table["gene"]],
                                                     dtype=object).value_counts().items()}

    t = de.get("response")
    if comps["response"].skipped or t is None or not len(t):
        out["resistance_genes"] = {"skipped": comps["response"].skipped}
    else:
        sig = t[t["significant"]]
        res, resp = planted(t, {"resistance"}), planted(t, {"drug_response"})
        up, down = sig[sig["score"] > 0], sig[sig["score"] < 0]
        top_up = t.nlargest(k, "score")
        top_down = t.nsmallest(k, "score")
        out["resistance_genes"] = dict(
            significant=_precision_recall(set(sig["gene"]), res),
            significant_up_in_resistant=_precision_recall(set(up["gene"]), res),
            top_k_up_in_resistant=_precision_recall(set(top_up["gene"]), res),
            average_precision_by_z=_average_precision(t, res, t["score"].to_numpy(float)),
            missed=sorted(res - set(up["gene"])),
            significant_by_program=by_program(sig),
        )
        out["drug_response_genes_in_responsive"] = dict(
            significant_down_in_resistant=_precision_recall(set(down["gene"]), resp),
            top_k_down_in_resistant=_precision_recall(set(top_down["gene"]), resp),
            average_precision_by_z=_average_precision(t, resp, -t["score"].to_numpy(float)),
            missed=sorted(resp - set(down["gene"])),
        )
    t = de.get("treatment")
    if comps["treatment"].skipped or t is None or not len(t):
        out["treatment_genes"] = {"skipped": comps["treatment"].skipped}
    else:
        sig = t[t["significant"]]
        planted_t = planted(t, {"treatment", "drug_response"})
        top = t.reindex(t["score"].abs().sort_values(ascending=False).index[:k])
        lfc = dict(zip(genes["gene"].astype(str), genes.get("treatment_lfc", pd.Series(np.nan, index=genes.index))))
        out["treatment_genes"] = dict(
            planted_programs=["treatment", "drug_response"],
            significant=_precision_recall(set(sig["gene"]), planted_t),
            top_k=_precision_recall(set(top["gene"]), planted_t),
            average_precision_by_abs_z=_average_precision(t, planted_t, t["score"].abs().to_numpy(float)),
            treatment_program_only=_precision_recall(set(sig["gene"]), planted(t, {"treatment"})),
            missed={g: round(float(lfc.get(g, np.nan)), 3) for g in sorted(planted_t - set(sig["gene"]))},
            significant_by_program=by_program(sig),
        )

    traits = set(DEMO_MORPHOLOGY_SHIFTS)
    traits_path = truth_dir / "morphology_traits.tsv"
    if traits_path.exists():
        listed = set(pd.read_csv(traits_path, sep="\t")["trait"].astype(str))
        traits &= listed
    shifts = []
    for comp in comps.values():
        # the affected cells are the group of `treatment` (treated) and the reference of `response` (responsive)
        flip = 1 if comp.name == "treatment" else -1
        for trait in sorted(traits):
            for feature, sign in DEMO_MORPHOLOGY_SHIFTS[trait]:
                row = dict(comparison=comp.name, trait=trait, feature=feature,
                           expected=f"{'higher' if sign * flip > 0 else 'lower'} in {comp.group}")
                hit = morph[(morph["comparison"] == comp.name) & (morph["feature"] == feature)]
                if comp.skipped or hit.empty or not np.isfinite(hit["qval"].iloc[0]):
                    row.update(recovered=None, note=comp.skipped or "feature not measured")
                else:
                    d, q = float(hit["cohens_d"].iloc[0]), float(hit["qval"].iloc[0])
                    row.update(cohens_d=d, qval=q, recovered=bool(q < params.fdr and np.sign(d) == sign * flip))
                shifts.append(row)
    scored = [s for s in shifts if s["recovered"] is not None]
    out["morphology_shifts"] = dict(recovered=sum(s["recovered"] for s in scored), scored=len(scored),
                                    shifts=shifts)
    return out


# ---------------------------------------------------------------------------------------
# figures
def _write_caption(path: Path, caption: str) -> None:
    with atomic_path(path.with_suffix(".txt")) as tmp:
        tmp.write_text(caption.strip() + "\n")


def plot_volcano(de: Mapping[str, pd.DataFrame], comps: Mapping[str, Comparison], path,
                 params: DrugResponseParams, n_labels: int = 8) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(6.2 * len(COMPARISONS), 4.8), squeeze=False)
    for ax, name in zip(axes[0], COMPARISONS):
        comp, table = comps[name], de.get(name)
        xlabel = f"log2 fold change ({comp.group} / {comp.reference})"
        if comp.skipped or table is None or not len(table):
            not_available(ax, comp.title, comp.skipped or "no genes tested", xlabel, "-log10 adjusted p")
            continue
        lfc = table["logfoldchange"].to_numpy(float)
        y = -np.log10(np.clip(table["pval_adj"].to_numpy(float), 1e-300, 1))
        sig = table["significant"].to_numpy(bool)
        up, down = sig & (table["score"].to_numpy() > 0), sig & (table["score"].to_numpy() < 0)
        ax.scatter(lfc[~sig], y[~sig], s=6, c="0.7", label=f"not significant ({(~sig).sum()})", rasterized=True)
        ax.scatter(lfc[up], y[up], s=9, c="C3", label=f"higher in {comp.group} ({up.sum()})")
        ax.scatter(lfc[down], y[down], s=9, c="C0", label=f"higher in {comp.reference} ({down.sum()})")
        ax.axhline(-np.log10(params.fdr), color="k", ls=":", lw=0.8)
        for i in np.argsort(-np.abs(table["score"].to_numpy()))[:n_labels]:
            ax.annotate(str(table["gene"].iloc[i]), (lfc[i], y[i]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
        ax.set(title=f"{comp.title}: {comp.n_group} vs {comp.n_reference} cells", xlabel=xlabel,
               ylabel="-log10 BH-adjusted p (Wilcoxon)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Differential expression")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, f"Wilcoxon rank-sum test of every gene (scanpy), BH-adjusted; coloured: FDR < {params.fdr} "
                         "(dotted line); the genes with the largest |z| are named.")


def plot_morphology_effects(morph: pd.DataFrame, comps: Mapping[str, Comparison], path,
                            params: DrugResponseParams) -> None:
    plt = _pyplot()
    n_feat = max(morph["feature"].nunique(), 1)
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(6 * len(COMPARISONS), 1.2 + 0.22 * n_feat),
                             squeeze=False)
    order = None
    for ax, name in zip(axes[0], COMPARISONS):
        comp = comps[name]
        xlabel = f"Cohen's d ({comp.group} − {comp.reference})"
        t = morph[morph["comparison"] == name]
        if comp.skipped or t.empty or not t["cohens_d"].notna().any():
            not_available(ax, comp.title, comp.skipped or "no features tested", xlabel, "region-property feature")
            continue
        if order is None:
            order = t.assign(a=t["cohens_d"].abs()).sort_values("a", na_position="first")["feature"].tolist()
        t = t.set_index("feature").reindex(order)
        d = t["cohens_d"].to_numpy(float)
        sig = t["significant"].eq(True).to_numpy(bool)
        colors = np.where(sig, np.where(d > 0, "C3", "C0"), "0.75")
        yy = np.arange(len(order))
        ax.barh(yy, np.nan_to_num(d), color=colors)
        for yi, di, s, q in zip(yy, np.nan_to_num(d), sig, t["qval"].to_numpy(float)):
            if s:
                stars = "***" if q < params.fdr / 50 else "**" if q < params.fdr / 5 else "*"
                ax.text(di + (0.02 if di >= 0 else -0.02), yi, stars, va="center", ha="left" if di >= 0 else "right",
                        fontsize=7)
        ax.set_yticks(yy)
        ax.set_yticklabels([f.removeprefix("morph_") for f in order], fontsize=7)
        ax.axvline(0, color="k", lw=0.6)
        lim = np.nanmax(np.abs(d)) * 1.25 + 0.05
        ax.set_xlim(-lim, lim)
        ax.set(title=f"{comp.title}", xlabel=xlabel, ylabel="region-property feature")
    fig.suptitle("Nuclear morphology differences (Mann-Whitney U, BH FDR)")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, f"Effect size (Cohen's d) of every region-property feature; coloured and starred: FDR < "
                         f"{params.fdr} (* < {params.fdr}, ** < {params.fdr / 5:g}, *** < {params.fdr / 50:g}); "
                         "red: higher in the tested group, blue: lower.")


def plot_classifier_auc(clf: pd.DataFrame, comps: Mapping[str, Comparison], path, params: DrugResponseParams) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(5.2 * len(COMPARISONS), 4.2), squeeze=False)
    for ax, name in zip(axes[0], COMPARISONS):
        comp = comps[name]
        t = clf[(clf["comparison"] == name) & clf["auc"].notna()]
        if comp.skipped or t.empty:
            not_available(ax, comp.title, comp.skipped or "no feature set available", "features",
                           "held-out ROC AUC")
            continue
        x = np.arange(len(t))
        bars = ax.bar(x, t["auc"], color=[f"C{FEATURE_SETS.index(f)}" for f in t["features"]])
        ax.scatter(x, t["balanced_accuracy"], color="k", marker="_", s=300, zorder=3, label="balanced accuracy")
        for b, v in zip(bars, t["auc"]):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
        ax.set_xticks(x)
        ax.set_xticklabels(t["features"], rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set(title=f"{comp.title}", xlabel="features", ylabel="held-out ROC AUC")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Predicting the group from each modality ({params.cv_folds}-fold logistic regression)")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, "ROC AUC (bars) and balanced accuracy (black ticks) of held-out predictions of standardised "
                         "logistic regression from each representation; dashed: chance.")


def plot_morphology_associated_genes(assoc: pd.DataFrame, comps: Mapping[str, Comparison], path,
                                     params: DrugResponseParams) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
    comp = comps["response"]
    scored = assoc[assoc["morphology_association"].notna()]
    if comp.skipped or scored.empty:
        reason = comp.skipped or "no gene has both a morphology R² and a resistant-vs-responsive effect"
        not_available(axes[0], "genes: morphology R² vs resistance effect", reason,
                       f"|Cohen's d| ({params.resistant} vs {params.responsive})", "held-out R² from morphology")
        not_available(axes[1], "top morphology-associated genes", reason, "morphology association",
                       "gene")
    else:
        sig = scored["significant"].eq(True).to_numpy(bool)
        d = scored["cohens_d"].abs().to_numpy(float)
        r2 = scored["r2_cosmic"].to_numpy(float)
        axes[0].scatter(d[~sig], r2[~sig], s=6, c="0.7", label="not DE", rasterized=True)
        axes[0].scatter(d[sig], r2[sig], s=10, c="C3", label=f"DE (FDR < {params.fdr})")
        for _, row in scored.head(10).iterrows():
            axes[0].annotate(row["gene"], (abs(row["cohens_d"]), row["r2_cosmic"]), fontsize=7, xytext=(3, 2),
                             textcoords="offset points")
        axes[0].axhline(0, color="grey", lw=0.5)
        axes[0].set_ylim(max(-0.2, np.nanmin(r2) - 0.02), None)
        axes[0].set(title="genes: morphology R² vs resistance effect",
                    xlabel=f"|Cohen's d| ({params.resistant} vs {params.responsive}, treated cells)",
                    ylabel="held-out R² from morphology (COSMIC)")
        axes[0].legend(fontsize=7)
        top = scored.head(params.top_n).iloc[::-1]
        up = top["cohens_d"].to_numpy(float) > 0
        axes[1].barh(np.arange(len(top)), top["morphology_association"], color=np.where(up, "C3", "C0"))
        axes[1].set_yticks(np.arange(len(top)))
        stars = [" *" if s else "" for s in top["significant"].eq(True)]
        axes[1].set_yticklabels([f"{g}{s}" for g, s in zip(top["gene"], stars)], fontsize=7)
        axes[1].set(title=f"top {len(top)} morphology-associated genes", xlabel="max(R², 0) × |Cohen's d|",
                    ylabel="gene (* DE)")
        from matplotlib.patches import Patch

        axes[1].legend(handles=[Patch(color="C3", label=f"higher in {params.resistant}"),
                                Patch(color="C0", label=f"higher in {params.responsive}")], fontsize=7,
                       loc="lower right")
    fig.suptitle("Genes predicted from morphology and linked to the resistant state")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    _write_caption(path, "Left: held-out R² of each gene predicted from morphology against its resistant-vs-"
                         "responsive effect size; right: genes ranked by their product (red: higher in resistant "
                         "cells, blue: lower; * significantly DE).")


# ---------------------------------------------------------------------------------------
# stage
def _write_tsv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def _top_genes(table: pd.DataFrame, n: int, sign: int) -> list:
    t = table[table["significant"] & (np.sign(table["score"]) == sign)]
    t = t.sort_values("score", ascending=sign < 0).head(n)
    return [dict(gene=g, logfoldchange=round(float(l), 3), pval_adj=float(p))
            for g, l, p in zip(t["gene"], t["logfoldchange"], t["pval_adj"])]


def run_drug_response(cohort, variance_table, outdir, params=None, truth_dir=None) -> dict:
    """Run the drug-response analysis and write its tables, figures and ``summary.json`` under ``outdir``.

    ``cohort``: AnnData or path of ``paired/cohort.h5ad``; ``variance_table``: path (or DataFrame)
    of ``cosmic/variance_decomposition.tsv``; ``params``: :class:`DrugResponseParams` or the
    ``drug_response:`` config mapping; ``truth_dir``: the demo's ``results/demo`` for recovery
    scores. Returns the summary dictionary.
    """
    import anndata as ad

    t0 = time.time()
    params = params if isinstance(params, DrugResponseParams) else DrugResponseParams.from_config(params or {})
    where = f"file '{cohort}'" if isinstance(cohort, (str, Path)) else "the cohort"
    if isinstance(cohort, (str, Path)) and not Path(cohort).exists():
        raise CosmicInputError(f"drug_response: cohort file '{cohort}' does not exist (paired/cohort.h5ad of the pair "
                               "stage)")
    adata = ad.read_h5ad(cohort) if isinstance(cohort, (str, Path)) else cohort
    if "X_morph" not in adata.obsm:
        raise CosmicInputError(f"drug_response: {where} has no obsm['X_morph'] (region-property features); obsm keys: "
                               f"{sorted(adata.obsm)}. Regenerate it with the pair stage.")
    variance = read_variance_table(variance_table)
    outdir = Path(outdir)
    figdir = outdir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)

    comps = define_comparisons(adata.obs, params)
    morph_names = np.asarray(adata.uns.get("morph_features",
                                           [f"morph_{i}" for i in range(adata.obsm["X_morph"].shape[1])])).astype(str)
    if len(morph_names) != adata.obsm["X_morph"].shape[1]:
        raise CosmicInputError(f"drug_response: {where}: uns['morph_features'] names {len(morph_names)} features but "
                               f"obsm['X_morph'] has {adata.obsm['X_morph'].shape[1]} columns")
    de, morph_tables = {}, []
    for name, comp in comps.items():
        log.info("drug_response: %s (%s)", name, comp.skipped or f"{comp.n_group} vs {comp.n_reference} cells")
        de[name] = differential_expression(adata, comp, params)
        if not comp.skipped:
            morph_tables.append(morphology_tests(np.asarray(adata.obsm["X_morph"])[comp.cells], morph_names,
                                                 comp.is_group, params, comparison=name, group=comp.group,
                                                 reference=comp.reference))
    morph = pd.concat(morph_tables, ignore_index=True) if morph_tables else pd.DataFrame(columns=MORPH_COLUMNS)
    clf = classifiers(adata, comps, params)
    assoc = morphology_associated_genes(variance, de["response"], params)

    _write_tsv(de["treatment"], outdir / TABLES["de_treatment"])
    _write_tsv(de["response"], outdir / TABLES["de_response"])
    _write_tsv(morph, outdir / TABLES["morphology_tests"])
    _write_tsv(clf, outdir / TABLES["classifiers"])
    _write_tsv(assoc, outdir / TABLES["morphology_associated_genes"])

    plot_volcano(de, comps, figdir / "volcano.png", params)
    plot_morphology_effects(morph, comps, figdir / "morphology_effects.png", params)
    plot_classifier_auc(clf, comps, figdir / "classifier_auc.png", params)
    plot_morphology_associated_genes(assoc, comps, figdir / "morphology_associated_genes.png", params)

    summary: dict[str, Any] = dict(params=params.to_dict(), n_cells=int(adata.n_obs), n_genes=int(adata.n_vars),
                                   comparisons={})
    for name, comp in comps.items():
        entry = comp.describe()
        if not comp.skipped:
            t, m = de[name], morph[morph["comparison"] == name]
            entry["differential_expression"] = dict(
                n_tested=len(t), n_significant=int(t["significant"].sum()),
                n_up=int((t["significant"] & (t["score"] > 0)).sum()),
                n_down=int((t["significant"] & (t["score"] < 0)).sum()),
                top_up=_top_genes(t, params.top_n, 1), top_down=_top_genes(t, params.top_n, -1))
            entry["morphology"] = dict(
                n_tested=int(m["pval"].notna().sum()), n_significant=int(m["significant"].sum()),
                significant=[dict(feature=f, cohens_d=round(float(d), 3), qval=float(q)) for f, d, q in
                             m[m["significant"]].sort_values("qval")[["feature", "cohens_d", "qval"]].itertuples(
                                 index=False)])
        c = clf[clf["comparison"] == name]
        entry["classifiers"] = {f: dict(auc=a, balanced_accuracy=b) for f, a, b in
                                zip(c["features"], c["auc"], c["balanced_accuracy"]) if np.isfinite(a)}
        summary["comparisons"][name] = entry
    scored = assoc[assoc["morphology_association"].notna()]
    summary["morphology_associated_genes"] = dict(
        ranking=RANKING, n_genes=len(assoc), n_scored=len(scored),
        skipped=comps["response"].skipped,
        top=[dict(gene=g, r2_cosmic=round(float(r), 3), cohens_d=round(float(d), 3), pval_adj=float(p),
                  score=round(float(s), 4))
             for g, r, d, p, s in scored.head(params.top_n)[["gene", "r2_cosmic", "cohens_d", "pval_adj",
                                                                "morphology_association"]].itertuples(index=False)])
    if truth_dir is not None:
        summary["demo_recovery"] = demo_recovery(truth_dir, de, morph, comps, params)
    summary["outputs"] = dict(**{k: v for k, v in TABLES.items()}, figures=[f"figures/{f}" for f in FIGURES])
    summary["runtime_s"] = round(time.time() - t0, 2)
    summary = write_json(outdir / "summary.json", summary)
    log.info("drug_response: done in %.1f s", summary["runtime_s"])
    return summary
