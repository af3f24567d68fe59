"""The drug-response stage: read the cohort, run every analysis, write tables, figures and summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_json
from ..cohort_io import read_cohort
from ..errors import CosmicInputError
from ..layout import DRUG_RESPONSE_FIGURES
from ..truth.drug_response import demo_recovery
from .classification import classifiers
from .comparisons import Comparison, define_comparisons
from .figures import plot_figures
from .genes import RANKING, morphology_associated_genes, read_variance_table
from .params import DrugResponseParams
from .statistics import MORPH_COLUMNS, differential_expression, morphology_tests

log = logging.getLogger(__name__)

TABLES = {"de_treatment": "de_treatment.tsv", "de_response": "de_response.tsv",
          "morphology_tests": "morphology_tests.tsv", "classifiers": "classifiers.tsv",
          "morphology_associated_genes": "morphology_associated_genes.tsv"}
# Figure files under figures/ (each with its caption <name>.txt); the names are the rule's (cosmic.layout).
FIGURES = tuple(f"{name}.png" for name in DRUG_RESPONSE_FIGURES)


def _read_cohort(cohort) -> tuple[Any, str]:
    """The cohort AnnData (read from a path, or given) and how error messages name it."""
    where = f"file '{cohort}'" if isinstance(cohort, (str, Path)) else "the cohort"
    if isinstance(cohort, (str, Path)) and not Path(cohort).exists():
        raise CosmicInputError(f"drug_response: cohort file '{cohort}' does not exist (paired/cohort.h5ad of the pair "
                               "stage)")
    # only annotations are loaded: the tests read X's rows from the file, a chunk at a time
    adata = read_cohort(cohort, x=False) if isinstance(cohort, (str, Path)) else cohort
    if "X_morph" not in adata.obsm:
        raise CosmicInputError(f"drug_response: {where} has no obsm['X_morph'] (region-property features); obsm keys: "
                               f"{sorted(adata.obsm)}. Regenerate it with the pair stage.")
    return adata, where


def _morphology_feature_names(adata, where: str) -> np.ndarray:
    """Names of the ``obsm["X_morph"]`` columns (``uns["morph_features"]``, else ``morph_<i>``)."""
    n_columns = adata.obsm["X_morph"].shape[1]
    names = np.asarray(adata.uns.get("morph_features", [f"morph_{i}" for i in range(n_columns)])).astype(str)
    if len(names) != n_columns:
        raise CosmicInputError(f"drug_response: {where}: uns['morph_features'] names {len(names)} features but "
                               f"obsm['X_morph'] has {n_columns} columns")
    return names


def _test_comparisons(adata, comps: Mapping[str, Comparison], morph_names: np.ndarray,
                      params: DrugResponseParams, source=None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Differential expression and morphology tests of every comparison (morphology tables concatenated)."""
    de, morph_tables = {}, []
    for name, comp in comps.items():
        log.info("drug_response: %s (%s)", name, comp.skipped or f"{comp.n_group} vs {comp.n_reference} cells")
        de[name] = differential_expression(adata, comp, params, source)
        if not comp.skipped:
            morph_tables.append(morphology_tests(np.asarray(adata.obsm["X_morph"])[comp.cells], morph_names,
                                                 comp.is_group, params, comparison=name, group=comp.group,
                                                 reference=comp.reference))
    morph = pd.concat(morph_tables, ignore_index=True) if morph_tables else pd.DataFrame(columns=MORPH_COLUMNS)
    return de, morph


def _write_tsv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def _top_genes(table: pd.DataFrame, n: int, sign: int) -> list:
    t = table[table["significant"] & (np.sign(table["score"]) == sign)]
    t = t.sort_values("score", ascending=sign < 0).head(n)
    return [dict(gene=g, logfoldchange=round(float(l), 3), pval_adj=float(p))
            for g, l, p in zip(t["gene"], t["logfoldchange"], t["pval_adj"])]


def _comparison_summary(comp: Comparison, de: pd.DataFrame, morph: pd.DataFrame, clf: pd.DataFrame,
                        params: DrugResponseParams) -> dict:
    """``summary.json`` entry of one comparison: its cells, DE and morphology counts, classifier scores."""
    entry = comp.describe()
    if not comp.skipped:
        t, m = de, morph[morph["comparison"] == comp.name]
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
    c = clf[clf["comparison"] == comp.name]
    entry["classifiers"] = {f: dict(auc=a, balanced_accuracy=b) for f, a, b in
                            zip(c["features"], c["auc"], c["balanced_accuracy"]) if np.isfinite(a)}
    return entry


def _associated_genes_summary(assoc: pd.DataFrame, comps: Mapping[str, Comparison],
                              params: DrugResponseParams) -> dict:
    """``summary.json`` entry of the morphology-associated genes: the ranking and its top genes."""
    scored = assoc[assoc["morphology_association"].notna()]
    return dict(
        ranking=RANKING, n_genes=len(assoc), n_scored=len(scored),
        skipped=comps["response"].skipped,
        top=[dict(gene=g, r2_cosmic=round(float(r), 3), cohens_d=round(float(d), 3), pval_adj=float(p),
                  score=round(float(s), 4))
             for g, r, d, p, s in scored.head(params.top_n)[["gene", "r2_cosmic", "cohens_d", "pval_adj",
                                                                "morphology_association"]].itertuples(index=False)])


def run_drug_response(cohort, variance_table, outdir, params=None, truth_dir=None) -> dict:
    """Run the drug-response analysis and write its tables, figures and ``summary.json`` under ``outdir``.

    ``cohort``: AnnData or path of ``paired/cohort.h5ad``; ``variance_table``: path (or DataFrame)
    of ``cosmic/variance_decomposition.tsv``; ``params``: :class:`DrugResponseParams` or the
    ``drug_response:`` config mapping; ``truth_dir``: the demo's ``results/demo`` for recovery
    scores (:func:`cosmic.truth.drug_response.demo_recovery`). Returns the summary dictionary.
    """
    t0 = time.time()
    params = params if isinstance(params, DrugResponseParams) else DrugResponseParams.from_config(params or {})
    adata, where = _read_cohort(cohort)
    variance = read_variance_table(variance_table)
    outdir = Path(outdir)
    figdir = outdir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)

    comps = define_comparisons(adata.obs, params)
    morph_names = _morphology_feature_names(adata, where)
    de, morph = _test_comparisons(adata, comps, morph_names, params,
                                  source=cohort if isinstance(cohort, (str, Path)) else None)
    clf = classifiers(adata, comps, params)
    assoc = morphology_associated_genes(variance, de["response"], params)

    _write_tsv(de["treatment"], outdir / TABLES["de_treatment"])
    _write_tsv(de["response"], outdir / TABLES["de_response"])
    _write_tsv(morph, outdir / TABLES["morphology_tests"])
    _write_tsv(clf, outdir / TABLES["classifiers"])
    _write_tsv(assoc, outdir / TABLES["morphology_associated_genes"])
    plot_figures(figdir, de, morph, clf, assoc, comps, params)

    summary: dict[str, Any] = dict(params=params.to_dict(), n_cells=int(adata.n_obs), n_genes=int(adata.n_vars),
                                   comparisons={name: _comparison_summary(comp, de[name], morph, clf, params)
                                                for name, comp in comps.items()})
    summary["morphology_associated_genes"] = _associated_genes_summary(assoc, comps, params)
    if truth_dir is not None:
        summary["demo_recovery"] = demo_recovery(truth_dir, de, morph, comps, params)
    summary["outputs"] = dict(**TABLES, figures=[f"figures/{f}" for f in FIGURES])
    summary["runtime_s"] = round(time.time() - t0, 2)
    summary = write_json(outdir / "summary.json", summary)
    log.info("drug_response: done in %.1f s", summary["runtime_s"])
    return summary
