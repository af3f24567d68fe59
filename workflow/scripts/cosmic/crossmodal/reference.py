"""Evaluation in the terms of the published COSMIC code (``reference_metrics`` of metrics.json):
per-gene Pearson overall, on detected cells and within cell type; cell-type classification of
predicted expression; distribution distances between real and generated morphology."""

from __future__ import annotations

import time

import numpy as np

from .. import metrics as M
from ..splits import subset_indices
from .preprocess import dense

# The expression classifier is fitted on at most this many training-cell x gene values (float64: 128 MB),
# a seeded random subset of at least CLASSIFIER_MIN_CELLS cells when there are more; metrics.json says how many.
CLASSIFIER_VALUES, CLASSIFIER_MIN_CELLS = 2 ** 24, 2000

REFERENCE_DEFINITIONS = dict(
    labels="RNA-derived cell types: Leiden clusters of training cells (test cells: label of their nearest "
           "training cells), or the obs column cosmic.label_key",
    pearson_all_cells="per-gene Pearson of predicted vs observed log-normalised expression over all test cells; "
                      "mean and median over genes (a constant prediction scores 0)",
    pearson_detected_cells="per-gene Pearson over the test cells where the gene is detected (count > 0), genes "
                           "detected in at least min_cells test cells",
    pearson_within_type="per-gene Pearson within each stratum (cell type, x sample when the test cells span several "
                        "samples) with at least min_cells cells; mean/median over genes, averaged over strata. "
                        "cosmic_permuted_within_type: COSMIC predictions shuffled within stratum (seeded), so cell "
                        "identity alone scores ~0 within type",
    cell_type_classifier="accuracy of a logistic regression trained on real (standardised) expression of training "
                         "cells, applied to predicted expression of test cells; observed: applied to real test "
                         "expression (ceiling); chance_majority: always the most frequent training type",
    rna_to_morphology="real test cells vs cells generated from their RNA, in the standardised representation space; "
                      "sets subsampled to equal size. sliced_wasserstein (lower better), knn_accuracy (leave-one-out "
                      "1-NN real-vs-generated accuracy, 0.5 ideal, <0.5 copying), coverage (fraction of real cells "
                      "that are the nearest real neighbour of some generated cell, higher better), "
                      "classifier_accuracy (5-fold CV accuracy of a shrinkage LDA on standardised features and their "
                      "squares, 0.5 ideal). cosmic_sample: one COSMIC sample per cell (averaged over draws); "
                      "cosmic_mean: the conditional mean; ridge_residual: ridge prediction + the residual of a "
                      "random training cell; train_real: real training cells of the same type (an ideal generator: "
                      "the floor/ceiling each metric can reach at this sample size)",
)

TWO_SAMPLE_METRICS = ("sliced_wasserstein", "knn_accuracy", "coverage", "classifier_accuracy")


def reference_metrics(*, y_expr, pred_expr, expr_sample, detected, expr_train, lab_tr, lab_te, samples_te,
                      y_rep, rep_mean, rep_samples, ridge_rep_te, ridge_resid_tr, rep_train, space, seed,
                      min_cells: int = 10, n_draws: int = 3, n_projections: int = 128) -> dict:
    """Evaluation in the terms of the published COSMIC code, on test cells only (see REFERENCE_DEFINITIONS)."""
    started = time.time()
    lab_tr, lab_te = np.asarray(lab_tr).astype(str), np.asarray(lab_te).astype(str)
    samples_te = np.asarray(samples_te).astype(str)
    several = len(np.unique(samples_te)) > 1
    strata = np.char.add(np.char.add(lab_te, " | "), samples_te) if several else lab_te
    m2r = _morphology_to_rna(y_expr, pred_expr, expr_sample, detected, expr_train, lab_tr, lab_te, strata,
                             "cell_type x sample" if several else "cell_type", seed, min_cells)
    r2m = _rna_to_morphology(y_rep, rep_mean, rep_samples, ridge_rep_te, ridge_resid_tr, rep_train, lab_tr, lab_te,
                             space, seed, min_cells, n_draws, n_projections)
    return dict(morphology_to_rna=m2r, rna_to_morphology=r2m, definitions=REFERENCE_DEFINITIONS,
                seconds=time.time() - started)


def _pearson_summary(r) -> dict:
    r = r[np.isfinite(r)]
    return dict(mean=float(r.mean()) if len(r) else float("nan"),
                median=float(np.median(r)) if len(r) else float("nan"), n_genes=int(len(r)))


def _morphology_to_rna(y_expr, pred_expr, expr_sample, detected, expr_train, lab_tr, lab_te, strata, strata_name,
                       seed, min_cells) -> dict:
    """Per-gene Pearson (all cells, detected cells, within stratum) and cell-type classification of
    predicted expression."""
    methods = [m for m in ("cosmic", "ridge", "knn", "mean") if m in pred_expr]
    preds = {m: pred_expr[m] for m in methods}
    preds["cosmic_permuted_within_type"] = M.permute_within_groups(pred_expr["cosmic"], strata, seed)
    all_cells = {m: _pearson_summary(M.pearson_per_feature(y_expr, p, constant_prediction=0.0))
                 for m, p in preds.items()}
    detected_cells = {m: _pearson_summary(M.masked_pearson_per_feature(y_expr, p, detected, min_cells=min_cells))
                      for m, p in preds.items()}
    within = {}
    for m, p in preds.items():
        w = M.within_group_pearson(y_expr, p, strata, min_cells=min_cells)
        within[m] = dict(mean=w["mean"], median=w["median"], n_strata=w["n_groups"])
        if m == "cosmic":
            within["per_stratum_cosmic"] = w["per_group"]
    within["strata"] = strata_name
    n_fit = max(CLASSIFIER_MIN_CELLS, CLASSIFIER_VALUES // max(1, expr_train.shape[1]))
    rows = subset_indices(len(lab_tr), n_fit, seed)
    clf, _ = M.classifier_transfer(dense(expr_train[rows]), lab_tr[rows],
                                   {"observed": y_expr, **{m: pred_expr[m] for m in methods},
                                    "cosmic_sample": expr_sample}, lab_te)
    clf["n_training_cells"] = int(len(rows))
    return dict(pearson_all_cells=all_cells, pearson_detected_cells=dict(min_cells=min_cells, **detected_cells),
                pearson_within_type=dict(min_cells=min_cells, **within), cell_type_classifier=clf)


def _rna_to_morphology(y_rep, rep_mean, rep_samples, ridge_rep_te, ridge_resid_tr, rep_train, lab_tr, lab_te,
                       space, seed, min_cells, n_draws, n_projections) -> dict:
    """Generated vs real morphology distributions, over all test cells and within each cell type."""
    rng = np.random.default_rng(seed)
    n_draws = max(1, min(int(n_draws), len(rep_samples)))
    n_te = len(y_rep)
    generators = {
        "cosmic_sample": [rep_samples[d] for d in range(n_draws)],
        "cosmic_mean": [rep_mean],
        "ridge_residual": [ridge_rep_te + ridge_resid_tr[rng.integers(0, len(ridge_resid_tr), n_te)]
                           for _ in range(n_draws)],
    }

    def mean_over_draws(real, draws) -> dict:
        rows = [M.two_sample_metrics(real, g, seed=seed + d, n_projections=n_projections)
                for d, g in enumerate(draws)]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    def compare(sel_te, sel_tr) -> dict:
        real = y_rep[sel_te]
        out = {m: mean_over_draws(real, [g[sel_te] for g in draws]) for m, draws in generators.items()}
        out["train_real"] = mean_over_draws(real, [rep_train[sel_tr]] * n_draws)
        return out

    overall = compare(np.ones(n_te, bool), np.ones(len(rep_train), bool))
    per_type, skipped = {}, {}
    for t in np.unique(lab_te):
        sel_te, sel_tr = lab_te == t, lab_tr == t
        if sel_te.sum() < min_cells or sel_tr.sum() < min_cells:
            skipped[str(t)] = int(sel_te.sum())
            continue
        per_type[str(t)] = dict(n_test_cells=int(sel_te.sum()), **compare(sel_te, sel_tr))
    mean_types = {}
    if per_type:
        for m in list(generators) + ["train_real"]:
            mean_types[m] = {k: float(np.mean([v[m][k] for v in per_type.values()])) for k in TWO_SAMPLE_METRICS}
    return dict(space=space, n_draws=n_draws, n_projections=n_projections, min_cells=min_cells, overall=overall,
                mean_over_types=mean_types, n_types_evaluated=len(per_type), per_type=per_type,
                types_too_small=skipped)
