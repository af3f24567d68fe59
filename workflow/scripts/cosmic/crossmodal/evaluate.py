"""Held-out evaluation: COSMIC beside baselines on the same split, scored on test cells only.

Baselines (ridge, kNN, training mean) are fitted on training cells; every score reads test cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import metrics as M
from .representation import Representation

METHODS = ("cosmic", "ridge", "knn", "mean")
VARIANCE_DEFINITIONS = dict(
    transcriptome_explained_by_morphology="variance-weighted total R² over kept genes of the "
                                          "morphology->RNA conditional mean (log-normalised expression)",
    morphology_explained_by_transcriptome="mean R² over standardised region-property features of the "
                                          "RNA->morphology conditional mean")


def score(y, pred, n_boot, seed, weighted=True) -> dict:
    """R² (total and mean over outputs), Pearson over outputs and the headline statistic with a
    bootstrap CI (total R² when ``weighted``, else mean R²)."""
    stat = M.total_r2 if weighted else M.mean_r2
    ci = M.bootstrap_ci(y, pred, stat, n_boot=n_boot, seed=seed)
    r = M.pearson_per_feature(y, pred)
    return dict(total_r2=M.total_r2(y, pred), mean_r2=M.mean_r2(y, pred),
                mean_pearson=float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
                median_pearson=float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
                headline=ci)


def matching(generated, observed) -> dict:
    """Cross-modal matching of generated to observed cells (FOSCTTM, top-1/top-10 retrieval)."""
    return dict(foscttm=M.foscttm(generated, observed), top1=M.topk_retrieval(generated, observed, 1),
                top10=M.topk_retrieval(generated, observed, 10), n_cells=int(len(observed)))


@dataclass
class HeldOut:
    """Test-cell targets and the predictions of COSMIC and the baselines (method -> array).

    ``observed``/``train``: :meth:`Preprocessor.transform` of test/training cells; ``x_rna_*``:
    RNA embedding plus covariates, the baselines' inputs in the RNA -> morphology direction.
    """

    observed: dict
    train: dict
    expression: dict
    rna_embedding: dict
    representation: dict
    features: dict
    x_rna_train: np.ndarray
    x_rna_test: np.ndarray

    @classmethod
    def from_predictions(cls, predictions: dict, train: dict, kind: Representation, k: int) -> "HeldOut":
        """Fit the baselines on training cells (``train``) and gather every method's test predictions."""
        observed = {key[len("observed_"):]: v for key, v in predictions.items() if key.startswith("observed_")}
        x_rep_tr, x_rep_te = np.hstack([train["rep"], train["cov"]]), np.hstack([observed["rep"], observed["cov"]])
        x_rna_tr, x_rna_te = np.hstack([train["rna"], train["cov"]]), np.hstack([observed["rna"], observed["cov"]])
        # float32 like the model's predictions: test cells x genes, several copies
        base_expr = {m: v.astype(np.float32) for m, v in M.baselines(x_rep_tr, train["expr"], x_rep_te, k).items()}
        base_rna = M.baselines(x_rep_tr, train["rna"], x_rep_te, k)
        base_rep = M.baselines(x_rna_tr, train["rep"], x_rna_te, k)
        base_morph = M.baselines(x_rna_tr, train["morph"], x_rna_te, k) if kind.is_foundation else base_rep
        return cls(observed=observed, train=train,
                   expression={"cosmic": predictions["expr_mean"], **base_expr},
                   rna_embedding={"cosmic": predictions["rna_mean"], **base_rna},
                   representation={"cosmic": predictions["rep_mean"], **base_rep},
                   features={"cosmic": predictions["morph_mean"], **base_morph},
                   x_rna_train=x_rna_tr, x_rna_test=x_rna_te)


def direction_scores(held: HeldOut, pc_std, genes, kind: Representation, n_boot: int, seed: int):
    """Scores of both directions (``morphology_to_rna``, ``rna_to_morphology`` of metrics.json) and
    the per-output R² and Pearson of expression (per gene) and region properties (per feature)."""
    y = held.observed
    m2r = dict(
        expression={m: score(y["expr"], p, n_boot, seed) for m, p in held.expression.items()},
        # RNA embedding R² in PCA-score units (variance-weighted = total over PCs)
        embedding={m: dict(total_r2=M.total_r2(y["rna"] * pc_std, p * pc_std), mean_r2=M.mean_r2(y["rna"], p))
                   for m, p in held.rna_embedding.items()},
    )
    r2m = dict(features={m: score(y["morph"], p, n_boot, seed, weighted=False) for m, p in held.features.items()})
    if kind.is_foundation:
        r2m["fm_embedding"] = {m: score(y["rep"], p, n_boot, seed, weighted=False)
                               for m, p in held.representation.items()}
    per_gene = dict(r2={m: M.r2_per_feature(y["expr"], p) for m, p in held.expression.items()},
                    pearson={m: M.pearson_per_feature(y["expr"], p) for m, p in held.expression.items()})
    per_feature = dict(r2={m: M.r2_per_feature(y["morph"], p) for m, p in held.features.items()},
                       pearson={m: M.pearson_per_feature(y["morph"], p) for m, p in held.features.items()})
    order = np.argsort(-np.nan_to_num(per_gene["r2"]["cosmic"], nan=-np.inf))
    m2r["top_genes"] = [dict(gene=str(genes[i]), r2=float(per_gene["r2"]["cosmic"][i])) for i in order[:20]]
    return m2r, r2m, per_gene, per_feature


def variance_decomposition(m2r: dict, r2m: dict) -> dict:
    """The headline: shared-variance fractions both ways, per method, with bootstrap CIs."""
    return dict(
        transcriptome_explained_by_morphology={m: v["headline"] for m, v in m2r["expression"].items()},
        morphology_explained_by_transcriptome={m: v["headline"] for m, v in r2m["features"].items()},
        definitions=VARIANCE_DEFINITIONS,
    )


def matching_scores(held: HeldOut) -> dict:
    """Matching of generated to observed cells, both directions, per method."""
    return dict(
        rna_to_morphology={m: matching(p, held.observed["rep"]) for m, p in held.representation.items()},
        morphology_to_rna={m: matching(p, held.observed["rna"]) for m, p in held.rna_embedding.items()},
    )


def interval_coverage(held: HeldOut, predictions: dict, level: float, scales, kind: Representation) -> dict:
    """Coverage on test cells of the central ``level`` intervals of the samples (calibrated on validation
    cells; ``scales``: the calibration summaries of the fit). Read from ``predictions["coverage"]`` (all
    draws, counted while sampling) when :func:`~cosmic.crossmodal.prediction.predict` was given the level,
    else computed from the returned samples."""
    y = held.observed
    counted = predictions.get("coverage") or {}

    def coverage(key):
        if key in counted:
            return counted[key]
        return M.interval_coverage(y[key], predictions[f"{key}_samples"], level)["coverage"]

    out = dict(level=level, fitted_on="validation cells: per-output scale of the samples' spread "
                                      "(split-conformal quantile), applied unchanged to test cells",
               scales=scales, rna_embedding=coverage("rna"), morphology_representation=coverage("rep"),
               expression=coverage("expr"))
    if kind.is_foundation:
        out["morphology_features"] = coverage("morph")
    return out


def per_feature_table(held: HeldOut, genes, morph_names, per_gene: dict, per_feature: dict,
                      kind: Representation) -> pd.DataFrame:
    """``variance_decomposition.tsv``: per gene, region-property feature (and X_fm dimension) the
    held-out R² and Pearson of every method, and the test-cell variance."""
    y = held.observed
    genes_rows = pd.DataFrame({"direction": "morphology_to_rna", "feature": genes, "variance": y["expr"].var(0),
                               **{f"r2_{m}": v for m, v in per_gene["r2"].items()},
                               **{f"pearson_{m}": v for m, v in per_gene["pearson"].items()}})
    feature_rows = pd.DataFrame({"direction": "rna_to_morphology", "feature": morph_names,
                                 "variance": y["morph"].var(0),
                                 **{f"r2_{m}": v for m, v in per_feature["r2"].items()},
                                 **{f"pearson_{m}": v for m, v in per_feature["pearson"].items()}})
    table = pd.concat([genes_rows, feature_rows], ignore_index=True)
    if kind.is_foundation:
        y_rep = y["rep"]
        table = pd.concat([table, pd.DataFrame({
            "direction": "rna_to_fm", "feature": [f"fm_{i}" for i in range(y_rep.shape[1])], "variance": y_rep.var(0),
            **{f"r2_{m}": M.r2_per_feature(y_rep, p) for m, p in held.representation.items()},
            **{f"pearson_{m}": M.pearson_per_feature(y_rep, p) for m, p in held.representation.items()}})],
            ignore_index=True)
    return table
