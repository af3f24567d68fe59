"""One split's scores: COSMIC and every baseline on that split's test cells, as long-format rows.

Each row is ``(direction, space, metric, method, split, value, n_train, n_test)`` (see
:mod:`cosmic.evaluation.summary`). Directions:

- ``rna_from_morphology``: expression (log-normalised kept genes) predicted from the morphology
  representation (plus covariates);
- ``morphology_from_rna``: standardised region properties predicted (conditional mean) and
  generated (samples) from the RNA embedding (plus covariates).

Spaces: ``features`` (the model's own outputs); the image spaces are added by
:mod:`cosmic.evaluation.image_rows` when generated nuclei images exist. Baselines are fitted on
the training cells of the same split (k of kNN chosen on its validation cells); every score reads
the test cells only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metrics as M
from . import baselines as B
from .generation import generation_scores


@dataclass
class SplitData:
    """Arrays of one split: ``train``/``val``/``test`` are :meth:`Preprocessor.transform` dictionaries
    (keys ``expr``, ``rna``, ``rep``, ``morph``, ``cov``), ``predictions`` COSMIC's
    :func:`~cosmic.crossmodal.prediction.predict` output for the test cells, ``labels`` the test
    cells' RNA-derived cell types (for the within-type Pearson)."""

    split: int
    train: dict
    val: dict
    test: dict
    predictions: dict
    labels: np.ndarray

    def inputs(self, part: dict, source: str) -> np.ndarray:
        return np.hstack([part[source], part["cov"]])

    @property
    def sizes(self) -> dict:
        return dict(split=self.split, n_train=int(len(self.train["expr"])), n_test=int(len(self.test["expr"])))


def metric_rows(direction: str, space: str, method: str, values: dict, sizes: dict) -> list[dict]:
    """One long-format row per metric of ``values`` for one method of one split."""
    return [dict(direction=direction, space=space, metric=metric, method=method, value=float(value), **sizes)
            for metric, value in values.items()]


def prediction_scores(y, pred, labels) -> dict:
    """Conditional-mean scores: weighted R², median per-output Pearson, within-type Pearson, FOSCTTM."""
    pearson = M.pearson_per_feature(y, pred, constant_prediction=0.0)
    within = M.within_group_pearson(y, pred, labels)
    return dict(weighted_r2=M.total_r2(y, pred),
                median_gene_pearson=float(np.nanmedian(pearson)) if np.isfinite(pearson).any() else float("nan"),
                within_type_pearson=within["median"],
                foscttm=M.foscttm(pred, y))


def sample_scores(real, samples, seed: int, max_cells: int) -> dict:
    """Generation scores of samples (n_samples x cells x dims) pooled against the real test cells, plus the
    conditional R² of the samples' mean."""
    pooled = samples.reshape(-1, samples.shape[-1])
    scores = generation_scores(real, pooled, seed=seed, max_cells=max_cells)
    scores["conditional_r2"] = M.total_r2(real, samples.mean(0))
    return scores


def direction_rows(data: SplitData, direction: str, seed: int) -> list[dict]:
    """Conditional-mean rows of one direction: COSMIC beside mean, ridge, spline ridge and kNN."""
    source, target, cosmic_key = (("rep", "expr", "expr_mean") if direction == "rna_from_morphology"
                                  else ("rna", "morph", "morph_mean"))
    predictions = B.predict_all(data.inputs(data.train, source), data.train[target], data.inputs(data.val, source),
                                data.val[target], data.inputs(data.test, source), seed=seed)
    predictions = {"cosmic": data.predictions[cosmic_key], **predictions}
    rows = []
    for method, pred in predictions.items():
        rows += metric_rows(direction, "features", method, prediction_scores(data.test[target], pred, data.labels),
                      data.sizes)
    return rows


def generation_rows(data: SplitData, n_generated: int, seed: int, max_cells: int) -> list[dict]:
    """Generated region properties (standardised) against the real test cells: COSMIC's samples,
    ridge + resampled residual, and the nearest training cell by RNA."""
    x_train, x_test = data.inputs(data.train, "rna"), data.inputs(data.test, "rna")
    k = max(1, int(n_generated))
    samples = {
        "cosmic": np.asarray(data.predictions["morph_samples"][:k]),
        "ridge_residual": B.ridge_residual_samples(x_train, data.train["morph"], x_test, k, seed),
        "nearest_rna": B.nearest_rna_samples(x_train, data.train["morph"], x_test, k)[0],
    }
    rows = []
    for method, generated in samples.items():
        rows += metric_rows("morphology_from_rna", "features", method,
                      sample_scores(data.test["morph"], generated, seed, max_cells), data.sizes)
    return rows


def coverage_rows(data: SplitData, level: float) -> list[dict]:
    """COSMIC's predictive intervals on test cells: the fraction of held-out values (cells x outputs) inside
    the central ``level`` interval of its samples, per direction (metric ``interval_coverage``; ideal:
    ``level``; the spread was calibrated on validation cells only)."""
    rows = []
    counted = data.predictions.get("coverage") or {}
    for direction, target in (("rna_from_morphology", "expr"), ("morphology_from_rna", "morph")):
        samples = data.predictions.get(f"{target}_samples")
        if target in counted:  # counted over every draw while sampling (see crossmodal.prediction.predict)
            coverage = counted[target]
        elif samples is not None and len(samples) >= 2:
            coverage = M.interval_coverage(data.test[target], samples, level)["coverage"]
        else:
            continue
        rows += metric_rows(direction, "features", "cosmic", {"interval_coverage": coverage}, data.sizes)
    return rows


def split_rows(data: SplitData, n_generated: int = 4, seed: int = 0, max_cells: int = 2000,
               level: float = 0.9) -> list[dict]:
    """Every feature-space row of one split (both directions, prediction, generation and the coverage of
    COSMIC's ``level`` predictive intervals)."""
    rows = direction_rows(data, "rna_from_morphology", seed)
    rows += direction_rows(data, "morphology_from_rna", seed)
    rows += generation_rows(data, n_generated, seed, max_cells)
    rows += coverage_rows(data, level)
    return rows
