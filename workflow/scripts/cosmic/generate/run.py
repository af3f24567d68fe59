"""The `generate_split` stage: for one held-out split of the repeated evaluation, train the RNA ->
nucleus image generator on that split's cells and draw nuclei for its test cells.

Split ``i`` is the evaluation's split (:func:`cosmic.evaluation.repeated.split_params`: seed
``cosmic.seed + i``), so the test cells are the ones every other method of that split is scored on.
The conditioning latent is the RNA embedding of the cross-modal model (training-cell PCA of the
kept genes, standardised; :class:`~cosmic.crossmodal.preprocess.Preprocessor` fitted on the
split's training cells only). The generator sees no test cell: unconditional pretraining reads the
crops of the training and validation cells, conditional fine-tuning the paired training cells.
Nuclei are drawn for at most ``generate.max_cells`` test cells (a seeded subsample; the rest of
the split's scores use all test cells).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import CosmicInputError
from ..cell_crops import CellCrops
from .params import GenerateParams

log = logging.getLogger(__name__)


def split_latents(cohort, cosmic_params, split: int):
    """The split's cells and the RNA latent of every cohort cell (training-cell PCA, standardised)."""
    from ..crossmodal.preprocess import Preprocessor
    from ..crossmodal.run import split_cohort
    from ..evaluation.repeated import split_params

    params = split_params(cosmic_params, split)
    cells = split_cohort(cohort, params)
    pre = Preprocessor(params.n_hvg, params.n_rna_pcs, "morph", params.covariates).fit(cells.part("train"))
    latent = pre.rna_embedding(pre.expression(cells.cohort))
    return cells, latent, params, pre


def generated_cells(test_names: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Indices (into the test cells, ascending) of the cells nuclei are drawn for."""
    from ..splits import subset_indices

    return subset_indices(len(test_names), max_cells, seed)


def run_generate_split(cohort, crop_banks: dict, cosmic_params, generate_params, split: int, outdir, out_path,
                       progress: bool = True) -> dict:
    """Train on split ``split``'s cells, draw ``n_generated`` nuclei for (up to ``max_cells`` of) its test
    cells and write ``out_path`` (``.npz``: ``generated`` n x M x C x S x S float16 in crop intensity units,
    ``cells`` the M test-cell names, ``channels`` the bank channels generated). Returns a summary."""
    from .sampling import generate
    from .training import fit_generator

    gparams = generate_params if isinstance(generate_params, GenerateParams) \
        else GenerateParams.from_config(generate_params or {})
    cells, latent, params, _ = split_latents(cohort, cosmic_params, split)
    obs = cells.cohort.obs
    for column in ("sample", "crop_index"):
        if column not in obs:
            raise CosmicInputError(f"generate: the cohort has no obs column '{column}' (cells without nuclei crops); "
                                   "the generator needs the images route")
    part = cells.split.to_numpy()
    seen = np.flatnonzero(part != "test")  # training + validation cells: never a test cell
    crops = CellCrops(crop_banks, obs["sample"].to_numpy()[seen], obs["crop_index"].to_numpy()[seen])
    seed = gparams.seed + int(split)
    fit_params = GenerateParams.from_config({**gparams.to_dict(), "seed": seed})
    model = fit_generator(crops, latent[seen], part[seen] == "train", fit_params, outdir=outdir, progress=progress)
    test = np.flatnonzero(part == "test")
    chosen = test[generated_cells(obs.index[test].to_numpy(), gparams.max_cells, seed)]
    images = generate(model, latent[chosen], gparams.n_generated, seed=seed, progress=progress)
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, generated=images.astype(np.float16), cells=obs.index[chosen].to_numpy().astype(str),
                     channels=np.asarray(gparams.channels, dtype=np.int64))
    summary = dict(split=int(split), n_train=int((part == "train").sum()), n_seen=len(seen), n_test=len(test),
                   n_generated_cells=len(chosen), n_per_cell=int(gparams.n_generated), shape=list(images.shape))
    log.info("generate: split %d: %s", split, summary)
    return summary


def read_generated(path) -> dict:
    """The arrays of a :func:`run_generate_split` output."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in ("generated", "cells", "channels")}


def to_bank_geometry(generated: np.ndarray, channels, bank_channels: int, bank_size: int) -> np.ndarray:
    """Generated crops (... x C' x S' x S', the generated ``channels``) placed into the bank's geometry
    (... x bank_channels x bank_size x bank_size; channels not generated are zero), resized with
    antialiasing, so they are measured exactly like real crops."""
    import torch
    import torch.nn.functional as F

    lead = generated.shape[:-3]
    flat = torch.from_numpy(np.asarray(generated, dtype=np.float32).reshape((-1,) + generated.shape[-3:]))
    if flat.shape[-1] != bank_size:
        flat = F.interpolate(flat, size=(bank_size, bank_size), mode="bilinear", antialias=True, align_corners=False)
    out = np.zeros((len(flat), bank_channels, bank_size, bank_size), dtype=np.float32)
    out[:, list(np.asarray(channels, dtype=int))] = flat.numpy()
    return out.reshape(lead + out.shape[1:])


def _groups(cells, latent, pre, params, rows: np.ndarray) -> np.ndarray:
    """'<RNA cell type> · <treatment>' of the cohort rows ``rows`` (cell types as in the cross-modal stage)."""
    from ..crossmodal import celltypes

    train = (cells.split == "train").to_numpy()
    pcs = latent * pre.state["pc_std"]
    _, types, _ = celltypes.rna_labels(cells.cohort[train], cells.cohort[rows], pcs[train], pcs[rows], params)
    obs = cells.cohort.obs
    treatment = obs["treatment" if "treatment" in obs else "sample"].astype(str).to_numpy()[rows]
    return np.asarray([f"{t} · {c}" for t, c in zip(types, treatment)])


def run_generate_figures(cohort, crop_banks: dict, cosmic_params, model_path, generated_path, cycle_cells,
                         dna_channel: int, figure_paths: dict, nucleus_diameter: float | None = None,
                         replicates: int = 3, seed: int = 0) -> None:
    """The generator's figures (:mod:`.figures`) for split 0: ``figure_paths`` maps each name of
    :data:`.figures.FIGURES` to its ``.png``; ``cycle_cells``: the cell-cycle stage's ``cells.tsv``."""
    import pandas as pd

    from ..evaluation.images import measure_crops
    from . import figures
    from .model import ConditionalNucleusDiffusion
    from .sampling import generate

    cells, latent, params, pre = split_latents(cohort, cosmic_params, 0)
    out = read_generated(generated_path)
    rows = cells.cohort.obs_names.get_indexer(out["cells"])
    if (rows < 0).any():
        raise CosmicInputError(f"{generated_path}: generated cells missing from the cohort; re-run generate_split")
    obs = cells.cohort.obs
    real_crops = CellCrops(crop_banks, obs["sample"].to_numpy()[rows], obs["crop_index"].to_numpy()[rows])
    real = real_crops[np.arange(len(rows))]
    generated = to_bank_geometry(out["generated"], out["channels"], real.shape[1], real.shape[-1])
    figures.real_vs_generated_figure(real[:, dna_channel], generated[:, :, dna_channel],
                                     _groups(cells, latent, pre, params, rows), figure_paths["generated_vs_real"])

    def measured(crops):
        return measure_crops(crops, dna_channel, nucleus_diameter=nucleus_diameter)

    real_table, generated_table = measured(real), measured(generated.reshape((-1,) + real.shape[1:]))
    figures.distributions_figure(real_table[real_table["found"]], generated_table[generated_table["found"]],
                                 figure_paths["generated_distributions"])
    # the sweep: nuclei drawn from the mean RNA latent of all cells in each bin of the RNA cycle position
    cycle = pd.read_csv(cycle_cells, sep="\t", index_col=0)["cycle_fraction"].reindex(obs.index).to_numpy(float)
    edges = np.linspace(0, 1, figures.CYCLE_BINS + 1)
    bins = np.clip(np.digitize(cycle, edges) - 1, 0, figures.CYCLE_BINS - 1)
    filled = [b for b in range(figures.CYCLE_BINS) if (np.isfinite(cycle) & (bins == b)).any()]
    means = np.stack([latent[np.isfinite(cycle) & (bins == b)].mean(0) for b in filled])
    model = ConditionalNucleusDiffusion.load(model_path)
    sweep = generate(model, means, replicates, seed=seed, progress=False)
    sweep = to_bank_geometry(sweep, out["channels"], real.shape[1], real.shape[-1])[:, :, dna_channel]
    n = out["generated"].shape[0]
    measured_bins = pd.concat([
        real_table.assign(kind="real", bin=bins[rows]),
        generated_table.assign(kind="generated", bin=np.tile(bins[rows], n))])
    measured_bins = measured_bins[measured_bins["found"] & np.isfinite(cycle[np.concatenate([rows, np.tile(rows, n)])])]
    centres = (edges[:-1] + edges[1:]) / 2
    figures.cycle_sweep_figure(sweep, centres[filled], measured_bins.assign(
        bin=pd.Series(measured_bins["bin"]).map({b: i for i, b in enumerate(filled)})), figure_paths[
        "generated_along_cycle"])
