"""The `cell_cycle` stage (:func:`run_cell_cycle`): read the paired cohort and COSMIC's predictions,
read the cycle from RNA and from morphology, compare the two, draw the figures and write
``cells.tsv``, ``confusion.tsv``, ``position_agreement.tsv`` (the position and the ``rna_pc_angle``
baseline against each reference angle, see :mod:`.agreement`) and ``summary.json``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_json
from ..cohort_io import read_cohort
from ..errors import CosmicInputError, describe
from ..truth import cell_cycle as cell_cycle_truth  # a module: truth.cell_cycle imports this package
from .agreement import (BASELINE, phase_agreement, position_agreement_rows, reference_angle_agreement,
                        reference_name, rna_pc_angle, write_position_agreement)
from .circular import circular_scores
from .figures import draw_figures
from .morphology import DnaContentModel, dna_content_phases, find_feature, log_dna, morphology_phase_cv, \
    morphology_position_cv
from .nuclei_strip import strip_images
from .params import FIGURES, TWO_PI, CellCycleParams
from .scoring import score_cell_cycle

RNA_COLUMNS = ("S_score", "G2M_score", "phase", "phase_position", "cycle_position")
CONFUSION_COLUMNS = ["comparison", "rna_phase", "morphology_phase", "n_cells"]


def run_cell_cycle(cohort, predictions, outdir, params: Mapping | None = None, truth_dir=None,
                   crops: Mapping[str, str] | None = None, generated_images=None, dna_channel: int = 0) -> dict:
    """Cell-cycle stage: RNA phase and position, morphology calls, agreement, figures.

    ``cohort``: ``paired/cohort.h5ad`` (path or AnnData). ``predictions``: ``cosmic/predictions.h5ad``
    (path, AnnData or None). ``generated_images``: the COSMIC-generated nuclei of the predicted
    cells (``cosmic/predictions_generated_images.npy`` as the rule declares it; None when COSMIC
    renders none). ``crops``: sample -> ``crops.npy`` (observed nuclei for the strip when there
    are no generated images). ``truth_dir``: the demo's ground-truth directory (scores against
    the truth when given). Writes ``cells.tsv``, ``confusion.tsv``, ``position_agreement.tsv``,
    ``summary.json`` and ``figures/*.png`` (+ ``.txt`` captions) under ``outdir``; returns the summary.
    """
    p = params if isinstance(params, CellCycleParams) else CellCycleParams.from_config(params)
    outdir = Path(outdir)
    adata, where = _read_adata(cohort, "paired cohort", layers=False)
    expression = None if adata is cohort else Path(cohort)  # read from the file a chunk of cells at a time
    pred, _ = _read_adata(predictions, "COSMIC predictions")
    if adata.n_obs < 10:
        raise CosmicInputError(f"{where}: {adata.n_obs} paired cells; the cell-cycle analysis needs at least 10")
    sample = _obs_strings(adata, "sample")
    cells, info = _rna_cells(adata, sample, p, where, expression)
    rna_phase = cells["phase_position"].to_numpy()
    summary: dict = {"n_cells": int(adata.n_obs), "samples": sorted(pd.unique(sample).tolist()),
                     "params": p.to_dict(), "genes": info["genes"], "rna": _rna_summary(cells, info)}
    references: dict[str, np.ndarray] = {}  # reference angles (radians) of position_agreement.tsv
    if p.reference_angle_key is not None:
        summary["reference_angle"] = reference_angle_agreement(adata.obs, p.reference_angle_key, cells, where)
        references[reference_name(p.reference_angle_key)] = cells[f"reference_{p.reference_angle_key}"].to_numpy()

    confusions: dict[str, dict] = {}  # RNA phase (rows) against each phase read from morphology
    morph = _MorphologyMatrix.of(adata)
    morphology, dna_model, dna_vs_tirosh = _dna_content_and_area(cells, morph, sample, rna_phase, p, confusions)
    if dna_vs_tirosh is not None:
        summary["agreement"] = {"dna_content_vs_rna_tirosh": dna_vs_tirosh}
    summary["morphology"] = morphology
    summary["classifiers"] = _morphology_classifiers(cells, adata, morph, rna_phase, p, confusions)
    summary.setdefault("agreement", {}).update({f"{k}_vs_rna": v for k, v in confusions.items()})
    summary["generated"], test_rows = _generated_morphology(cells, adata, pred, morph, dna_model, sample,
                                                            rna_phase, confusions)
    truth = cell_cycle_truth.load_truth_cells(truth_dir)
    if truth is not None:
        summary["truth"] = cell_cycle_truth.truth_summary(cells, truth)
        references["demo_truth"] = cell_cycle_truth.true_cycle_angle(cells, truth)

    images = strip_images(cells, pred, generated_images, crops, adata, test_rows, p.n_position_bins, dna_channel)
    summary["nuclei_strip"] = {"source": images["source"], "n_bins": p.n_position_bins}
    draw_figures(outdir / "figures", cells, info, dna_model, confusions, images, p.n_position_bins, adata,
                 morph.names)
    summary["figures"] = {f: f"figures/{f}.png" for f in FIGURES}
    _write_confusion(outdir / "confusion.tsv", confusions)
    write_position_agreement(outdir / "position_agreement.tsv", [
        row for name, angle in references.items()
        for row in position_agreement_rows(name, cells["cycle_position"], cells[BASELINE], angle, seed=p.seed)])
    with atomic_path(outdir / "cells.tsv") as tmp:
        cells.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return write_json(outdir / "summary.json", summary)


# ---------------------------------------------------------------------------------------
# inputs
def _read_adata(x, what, layers: bool = True):
    """``(AnnData or None, how errors name it)``; without ``layers``, ``X`` and the layers stay on disk
    (see cosmic.cohort_io)."""
    import anndata as ad

    if x is None or isinstance(x, ad.AnnData):
        return x, what
    p = Path(x)
    if not p.exists():
        raise CosmicInputError(f"{describe(p)}: {what} not found; run the rule that writes it first")
    try:
        return (ad.read_h5ad(p) if layers else read_cohort(p, x=False, what=what)), describe(p)
    except Exception as exc:  # noqa: BLE001
        raise CosmicInputError(f"{describe(p)}: unreadable h5ad ({exc}); delete it and re-run its rule") from exc


def _obs_strings(adata, column: str) -> np.ndarray:
    """``obs[column]`` as strings; "all" for every cell (sample) or the obs names (barcode) without it."""
    if column in adata.obs:
        return adata.obs[column].astype(str).to_numpy()
    if column == "sample":
        return np.full(adata.n_obs, "all", dtype=object)
    return adata.obs_names.astype(str).to_numpy()


@dataclass
class _MorphologyMatrix:
    """The cohort's morphology features (``obsm["X_morph"]``) and the DNA and area features in them."""

    names: list[str]
    values: np.ndarray | None
    dna_feature: str | None
    area_feature: str | None

    @classmethod
    def of(cls, adata) -> "_MorphologyMatrix":
        names = [str(n) for n in adata.uns.get("morph_features", [])]
        values = np.asarray(adata.obsm["X_morph"], dtype=np.float64) if "X_morph" in adata.obsm else None
        if values is not None and len(names) != values.shape[1]:
            names = [f"morph_{i}" for i in range(values.shape[1])]
        dna_feature = find_feature(names, "dna") if values is not None else None
        area_feature = find_feature(names, "area") if values is not None else None
        return cls(names, values, dna_feature, area_feature)

    def column(self, feature: str) -> np.ndarray:
        return self.values[:, self.names.index(feature)]


# ---------------------------------------------------------------------------------------
# RNA
def _rna_cells(adata, sample: np.ndarray, p: CellCycleParams, where: str, expression=None) -> tuple[pd.DataFrame, dict]:
    """One row per cell: ids, Tirosh scores and phase, the position and the phase it implies
    (``expression``: the h5ad file whose ``X`` is read a chunk of cells at a time; None: ``adata.X``)."""
    rna, info = score_cell_cycle(adata, p.organism, seed=p.seed, n_neighbors=p.n_neighbors,
                                 method=p.position_method, min_genes=p.min_genes, where=where, x=expression)
    cells = pd.DataFrame({"cell_id": adata.obs_names.astype(str), "sample": sample,
                          "barcode": _obs_strings(adata, "barcode")})
    for column in RNA_COLUMNS:
        cells[column] = rna[column].to_numpy()
    cells["cycle_fraction"] = cells["cycle_position"] / TWO_PI
    cells[BASELINE], info["baseline_source"] = rna_pc_angle(adata, seed=p.seed, x=expression)
    cells[f"{BASELINE}_fraction"] = cells[BASELINE] / TWO_PI
    return cells, info


def _rna_summary(cells: pd.DataFrame, info: dict) -> dict:
    return {"position_method": info["method"], "peaks": info["peaks"], "reflected": info["reflected"],
            "phase_counts_tirosh": cells["phase"].value_counts().to_dict(),
            "phase_counts_position": cells["phase_position"].value_counts().to_dict(),
            "tirosh_vs_position": phase_agreement(cells["phase"], cells["phase_position"]),
            f"baseline_{BASELINE}_source": info["baseline_source"]}


# ---------------------------------------------------------------------------------------
# morphology
def _dna_content_and_area(cells, morph: _MorphologyMatrix, sample, rna_phase, p: CellCycleParams,
                          confusions: dict) -> tuple[dict, DnaContentModel | None, dict | None]:
    """DNA-content phase calls and nuclear area added to ``cells``; returns the morphology summary,
    the fitted DNA-content model and the DNA calls' agreement with the Tirosh phase (None without
    them)."""
    summary: dict = {"dna_feature": morph.dna_feature, "area_feature": morph.area_feature}
    dna_model = dna_vs_tirosh = None
    if morph.dna_feature is not None:
        cells["dna_content"] = morph.column(morph.dna_feature)
        try:
            calls, dna_model = dna_content_phases(cells["dna_content"], sample, seed=p.seed,
                                                  s_max_posterior=p.s_max_posterior, feature=morph.dna_feature)
        except CosmicInputError as exc:
            summary["dna_note"] = str(exc)
        else:
            for column in calls.columns:
                cells[column] = calls[column].to_numpy()
            summary["dna_peaks"] = dna_model.peaks()
            summary["phase_counts_dna"] = cells["phase_dna"].value_counts().to_dict()
            confusions["dna_content"] = phase_agreement(rna_phase, cells["phase_dna"])
            dna_vs_tirosh = phase_agreement(cells["phase"], cells["phase_dna"])
    else:
        summary["dna_note"] = f"no DNA-content feature among {morph.names[:10]}"
    if morph.area_feature is not None:
        cells["area"] = morph.column(morph.area_feature)
        summary["area_by_rna_phase"] = cells.groupby("phase_position")["area"].median().to_dict()
    return summary, dna_model, dna_vs_tirosh


def _morphology_classifiers(cells, adata, morph: _MorphologyMatrix, rna_phase, p: CellCycleParams,
                            confusions: dict) -> dict:
    """Held-out phase and position predicted from the region features and the foundation embedding."""
    representations = {}
    if morph.values is not None:
        representations["features"] = morph.values
    if "X_fm" in adata.obsm:
        representations["fm"] = np.asarray(adata.obsm["X_fm"], dtype=np.float64)
    classifiers = {}
    for name, x in representations.items():
        predicted_phase = morphology_phase_cv(x, rna_phase, seed=p.seed, n_splits=p.cv_folds)
        predicted_position = morphology_position_cv(x, cells["cycle_position"], seed=p.seed, n_splits=p.cv_folds)
        cells[f"position_morph_{name}"] = predicted_position
        result = {f"position_{k}": v for k, v in circular_scores(cells["cycle_position"], predicted_position).items()}
        if predicted_phase is not None:
            cells[f"phase_morph_{name}"] = predicted_phase
            confusions[f"classifier_{name}"] = phase_agreement(rna_phase, predicted_phase)
            result.update(confusions[f"classifier_{name}"])
        classifiers[name] = result
    return classifiers


# ---------------------------------------------------------------------------------------
# COSMIC predictions: morphology generated from RNA for held-out cells
def _generated_morphology(cells, adata, pred, morph: _MorphologyMatrix, dna_model, sample, rna_phase,
                          confusions: dict) -> tuple[dict, np.ndarray]:
    """Marks the predicted (test) cells in ``cells["split"]`` and adds their generated DNA content,
    DNA phase and area; returns the ``generated`` summary and the test cells' rows."""
    generated = {"available": pred is not None}
    if pred is None:
        return generated, np.array([], dtype=int)
    row_of = pd.Series(np.arange(adata.n_obs), index=adata.obs_names.astype(str))
    test_rows = row_of.reindex(pred.obs_names.astype(str)).to_numpy()
    in_cohort = ~pd.isna(test_rows)
    test_rows = test_rows[in_cohort].astype(int)
    cells["split"] = "train/val"
    cells.loc[test_rows, "split"] = "test"
    generated["n_test_cells"] = int(len(test_rows))
    gen_names = [str(n) for n in pred.uns.get("cosmic", {}).get("morph_features", morph.names)]
    values = pred.obsm.get("X_morph_features_generated")
    if values is None or len(gen_names) != values.shape[1]:
        return generated, test_rows
    values = np.asarray(values, dtype=np.float64)[in_cohort]
    dna_f, area_f = morph.dna_feature, morph.area_feature
    if dna_model is not None and dna_f in gen_names:
        calls = dna_model.predict(log_dna(values[:, gen_names.index(dna_f)], dna_f), sample[test_rows])
        cells["dna_n_generated"] = np.nan
        cells.loc[test_rows, "dna_n_generated"] = calls["dna_n"].to_numpy()
        cells["phase_dna_generated"] = None
        cells.loc[test_rows, "phase_dna_generated"] = calls["phase_dna"].to_numpy()
        generated["dna_generated_vs_rna"] = phase_agreement(rna_phase[test_rows], calls["phase_dna"])
        generated["dna_observed_vs_rna_same_cells"] = phase_agreement(rna_phase[test_rows],
                                                                      cells["phase_dna"].to_numpy()[test_rows])
        confusions["generated_dna"] = generated["dna_generated_vs_rna"]
    if area_f is not None and area_f in gen_names:
        cells["area_generated"] = np.nan
        cells.loc[test_rows, "area_generated"] = values[:, gen_names.index(area_f)]
    return generated, test_rows


# ---------------------------------------------------------------------------------------
# outputs
def _write_confusion(path: Path, confusions: dict) -> None:
    """``confusion.tsv``: one row per comparison, RNA phase and morphology phase."""
    rows = []
    for comparison, result in confusions.items():
        labels = result["labels"]
        for i, rna_phase in enumerate(labels):
            for j, morphology_phase in enumerate(labels):
                rows.append({"comparison": comparison, "rna_phase": rna_phase, "morphology_phase": morphology_phase,
                             "n_cells": result["confusion"][i][j]})
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=CONFUSION_COLUMNS).to_csv(tmp, sep="\t", index=False)
