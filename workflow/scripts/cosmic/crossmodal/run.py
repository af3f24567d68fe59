"""The `cosmic` stage: split, fit, evaluate on held-out test cells only, write the outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics as M
from ..atomic import atomic_path, write_json
from ..errors import CosmicInputError
from ..splits import make_splits
from ..truth.crossmodal import load_truth, score_against_truth
from . import celltypes, evaluate
from .figures import stage_figures
from .params import CosmicParams
from .prediction import predict, write_predictions
from .preprocess import dense
from .representation import MORPH
from .reference import reference_metrics
from .train import fit_cosmic

CONFUSION_TABLE = "cell_type_confusion.tsv"  # written beside metrics.json


def run_cosmic(cohort, outdir_model, predictions_path, metrics_path, variance_path, params=None,
               figures_dir=None, decode_images: Callable[[np.ndarray], np.ndarray] | None = None,
               truth=None, progress: bool = True, generated_images=None, finetune_inputs=None) -> dict:
    """Split, fit, evaluate on held-out test cells only, and write the stage outputs.

    ``cohort``: AnnData or path of ``paired/cohort.h5ad``. ``params``: :class:`CosmicParams` or the
    ``cosmic:`` config mapping. ``decode_images``: optional callable mapping foundation embeddings
    (cells x dims, X_fm units) to crops (cells x C x S x S); the decoded generated nuclei are written
    to ``generated_images`` (default: ``<predictions>_generated_images.npy``). ``truth``: demo ground
    truth (see :func:`cosmic.truth.crossmodal.load_truth`). Returns the metrics dictionary (also
    written to ``metrics_path``); also writes ``cell_type_confusion.tsv`` next to it and, with
    ``figures_dir``, the figures of :data:`cosmic.layout.COSMIC_FIGURES`. ``finetune_inputs``:
    ``(foundation model, crop banks by sample)`` when ``params.finetune_blocks`` > 0 (see
    :mod:`cosmic.crossmodal.finetune`).
    BLAS/OpenMP pools are capped at ``params.num_threads`` (0: no cap) for the whole stage: the
    matrices are small and oversubscribed BLAS threads are many times slower on a shared node.
    """
    from threadpoolctl import threadpool_limits

    params = params if isinstance(params, CosmicParams) else CosmicParams.from_config(params or {})
    with threadpool_limits(limits=params.num_threads if params.num_threads > 0 else None):
        return _run_cosmic(cohort, outdir_model, predictions_path, metrics_path, variance_path, params,
                           figures_dir, decode_images, truth, progress, generated_images, finetune_inputs)


@dataclass
class Cells:
    """The cohort and its split into training, validation and test cells."""

    cohort: object
    split: pd.Series
    read_here: bool = False  # read from a file by split_cohort (not the caller's object)

    def part(self, name: str):
        return self.cohort[(self.split == name).to_numpy()]

    def counts(self) -> dict:
        return {name: int((self.split == name).sum()) for name in ("train", "val", "test")}

    def release_expression(self) -> None:
        """Free the expression matrix of a cohort read here (its shape stays; obs, obsm and uns stay)."""
        if self.read_here:
            import scipy.sparse as sp

            self.cohort.X = sp.csr_matrix(self.cohort.shape, dtype=np.float32)


def split_cohort(cohort, params: CosmicParams, genes_only: bool = False, progress: bool = True) -> Cells:
    """The cohort (AnnData or h5ad path) split into training, validation and test cells by ``params.seed``.

    ``genes_only`` (a path): read only the genes the preprocessor can keep, streamed from disk
    (:func:`cosmic.crossmodal.cohort.read_cohort_for_genes`), so memory follows those genes' stored values."""
    import anndata as ad

    def split_of(obs: pd.DataFrame) -> pd.Series:
        if "sample" not in obs:
            raise CosmicInputError("the cohort has no obs column 'sample'")
        split = make_splits(obs, params.fractions, params.seed, params.stratify, params.holdout_samples)
        if (split == "test").sum() < 3:
            raise CosmicInputError(f"cosmic: only {(split == 'test').sum()} test cells; raise the test fraction")
        return split

    if isinstance(cohort, (str, Path)) and genes_only:
        from .cohort import read_cohort_for_genes

        return Cells(*read_cohort_for_genes(cohort, split_of, params.n_hvg, progress=progress), read_here=True)
    adata = ad.read_h5ad(cohort) if isinstance(cohort, (str, Path)) else cohort
    return Cells(adata, split_of(adata.obs), read_here=isinstance(cohort, (str, Path)))


def _run_cosmic(cohort, outdir_model, predictions_path, metrics_path, variance_path, params, figures_dir,
                decode_images, truth, progress, generated_images=None, finetune_inputs=None) -> dict:
    started = time.time()
    cells = split_cohort(cohort, params, genes_only=True, progress=progress)
    if params.finetune_blocks > 0 and finetune_inputs is not None and finetune_inputs[1]:
        from .finetune import attach_tail_inputs

        attach_tail_inputs(cells.cohort, *finetune_inputs, params.finetune_blocks)
    fit = fit_cosmic(cells.cohort, cells.split, params, outdir=outdir_model, progress=progress)
    pre = fit["preprocessor"]
    train_cells, test_cells = cells.part("train"), cells.part("test")
    predictions = predict(fit["model"], pre, test_cells, params.n_samples, seed=params.seed,
                          keep=max(params.n_output_samples, params.evaluation_params.n_generated, 1),
                          level=params.interval_level)
    train_inputs = pre.transform(train_cells, sparse_expression=True)
    if truth is None:  # nothing reads the cohort's expression again (the demo's truth re-reads validation cells)
        cells.release_expression()
    held = evaluate.HeldOut.from_predictions(predictions, train_inputs, pre.kind, params.knn_neighbors)
    del train_inputs
    results, per_gene, table, confusion = _evaluate(cells, held, predictions, fit, params)
    truth_data = load_truth(truth)
    if truth_data:
        results["oracle"] = score_against_truth(
            truth_data, table, results, pre=pre, train_cells=train_cells, val_cells=cells.part("val"),
            test_cells=test_cells, train_inputs=dict(held.train, expr=dense(held.train["expr"])), observed=held.observed,
            generated_rep=held.representation)
    with atomic_path(variance_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(Path(metrics_path).with_name(CONFUSION_TABLE)) as tmp:
        confusion.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_predictions(predictions_path, test_cells, pre.gene_names, predictions, pre, params, decode_images,
                      generated_images)
    if figures_dir is not None:
        stage_figures(figures_dir, pre.gene_names, per_gene["r2"], results, confusion)
    results["seconds_total"] = time.time() - started
    write_json(metrics_path, results)
    return results


def _evaluate(cells: Cells, held, predictions: dict, fit: dict, params: CosmicParams):
    """Every held-out evaluation: the metrics (without the demo oracle), the per-gene scores, the
    per-feature table (variance_decomposition.tsv) and the cell-type confusion table."""
    pre = fit["preprocessor"]
    train_cells, test_cells = cells.part("train"), cells.part("test")
    results, per_gene, per_feature = _held_out_results(held, predictions, fit, pre, params)
    labels = celltypes.rna_labels(train_cells, test_cells, held.train["rna"] * pre.state["pc_std"],
                                  held.observed["rna"] * pre.state["pc_std"], params)
    results["cell_type_transfer"], confusion = celltypes.cell_type_transfer(
        labels, held.train["rep"], held.observed["rep"], held.representation, predictions["rep_samples"][0],
        pre.kind.other(), train_cells, test_cells)
    results["reference_metrics"] = _reference(held, predictions, pre, labels, test_cells, params.seed)
    results = _assemble_metrics(results, cells, test_cells, pre, held, fit, params)
    table = evaluate.per_feature_table(held, pre.gene_names, _morph_feature_names(cells.cohort), per_gene,
                                       per_feature, pre.kind)
    return results, per_gene, table, confusion


def _morph_feature_names(adata) -> np.ndarray:
    n_features = adata.obsm[MORPH.obsm_key].shape[1]
    return np.asarray(adata.uns.get("morph_features", [f"morph_{i}" for i in range(n_features)])).astype(str)


def _held_out_results(held, predictions, fit, pre, params) -> tuple[dict, dict, dict]:
    """Scores of both directions, variance decomposition, matching and interval coverage (test cells);
    also the per-gene and per-feature scores."""
    m2r, r2m, per_gene, per_feature = evaluate.direction_scores(held, pre.state["pc_std"], pre.gene_names,
                                                                pre.kind, params.n_bootstrap, params.seed)
    results = dict(morphology_to_rna=m2r, rna_to_morphology=r2m,
                   variance_decomposition=evaluate.variance_decomposition(m2r, r2m),
                   matching=evaluate.matching_scores(held),
                   calibration=evaluate.interval_coverage(held, predictions, params.interval_level,
                                                          fit.get("calibration_scales"), pre.kind))
    return results, per_gene, per_feature


def _reference(held, predictions, pre, labels, test_cells, seed) -> dict:
    """:func:`reference_metrics` on the test cells, plus the labels they used."""
    lab_tr, lab_te, method = labels
    # a gene is detected where its log-normalised expression is positive (counts > 0)
    detected = held.observed["expr"] > 0
    n_train = len(held.x_rna_train)
    ridge_rep = M.ridge_baseline(held.x_rna_train, held.train["rep"], np.vstack([held.x_rna_train, held.x_rna_test]))
    reference = reference_metrics(
        y_expr=held.observed["expr"], pred_expr=held.expression, expr_sample=predictions["expr_samples"][0],
        detected=detected, expr_train=held.train["expr"], lab_tr=lab_tr, lab_te=lab_te,
        samples_te=test_cells.obs["sample"].astype(str).to_numpy(), y_rep=held.observed["rep"],
        rep_mean=predictions["rep_mean"], rep_samples=predictions["rep_samples"], ridge_rep_te=ridge_rep[n_train:],
        ridge_resid_tr=held.train["rep"] - ridge_rep[:n_train], rep_train=held.train["rep"],
        space=f"standardised {pre.kind.obsm_key}", seed=seed)
    reference["labels"] = dict(method=method, n_types=int(len(np.unique(lab_tr))),
                               train_counts=pd.Series(lab_tr).value_counts().sort_index().to_dict(),
                               test_counts=pd.Series(lab_te).value_counts().sort_index().to_dict())
    reference["cell_type_confusion"] = CONFUSION_TABLE
    return reference


def _assemble_metrics(results: dict, cells: Cells, test_cells, pre, held, fit, params) -> dict:
    """metrics.json: the run's sizes and training summary, then the evaluation sections, in a fixed order."""
    y = held.observed
    return dict(
        n_cells=cells.counts(),
        test_samples=sorted(test_cells.obs["sample"].astype(str).unique().tolist()),
        representation=pre.kind.name, n_genes=int(len(pre.gene_names)), n_rna_pcs=int(len(pre.state["pc_std"])),
        n_morph_features=int(y["morph"].shape[1]), n_rep_dims=int(y["rep"].shape[1]),
        training=dict(best_epoch=fit["best_epoch"], epochs_run=fit["epochs_run"],
                      best_val_loss=fit["best_val_loss"], seconds=fit["seconds"], device=fit["device"]),
        **{key: results[key] for key in ("morphology_to_rna", "rna_to_morphology", "variance_decomposition",
                                         "matching", "cell_type_transfer", "reference_metrics", "calibration")},
        params=params.to_dict(),
    )
