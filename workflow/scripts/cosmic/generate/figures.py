"""Figures of the RNA -> nucleus generator (split 0 of the evaluation; test cells only):

- ``generated_vs_real``: for test cells of each RNA cell type (Leiden clusters of the training cells'
  RNA, as in the cross-modal stage) and treatment, the real nucleus beside nuclei drawn from its RNA;
- ``generated_along_cycle``: nuclei drawn from the mean RNA latent of cells binned by their RNA
  cell-cycle position (a sweep along the cycle; they should grow and gain DNA), with the measured
  area and DNA content of real and generated nuclei per bin;
- ``generated_distributions``: area, integrated DNA and eccentricity of generated and real nuclei,
  measured with the workflow's own extractor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..plotting import _pyplot, save_figure

from ..layout import GENERATE_FIGURES as FIGURES  # names shared with the rules
PROPERTIES = (("morph_area", "area (px²)"), ("morph_dna_integrated", "integrated DNA"),
              ("morph_eccentricity", "eccentricity"))
CYCLE_BINS = 8


def _show(ax, crop: np.ndarray, limits, title: str | None = None):
    ax.imshow(crop, cmap="magma", vmin=limits[0], vmax=limits[1])
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _caption(path: Path, text: str):
    with atomic_path(path.with_suffix(".txt")) as tmp:
        Path(tmp).write_text(text.strip() + "\n")


def real_vs_generated_figure(real: np.ndarray, generated: np.ndarray, groups: np.ndarray, path,
                             cells_per_group: int = 2, max_groups: int = 8) -> None:
    """``real``: M x S x S (DNA channel of the test cells), ``generated``: n x M x S x S, ``groups``: M
    labels. One row per shown cell: its real nucleus, then its generated nuclei."""
    plt = _pyplot()
    path = Path(path)
    names = [g for g in pd.unique(groups)][:max_groups]
    shown = [(g, i) for g in names for i in np.flatnonzero(groups == g)[:cells_per_group]]
    n = generated.shape[0]
    limits = np.percentile(np.concatenate([real.ravel(), generated.ravel()]), [1, 99.5])
    fig, axes = plt.subplots(max(1, len(shown)), n + 1, figsize=(1.3 * (n + 1), 1.3 * max(1, len(shown)) + 0.5),
                             squeeze=False, layout="constrained")
    for row, (group, cell) in enumerate(shown):
        _show(axes[row, 0], real[cell], limits, "real" if row == 0 else None)
        axes[row, 0].set_ylabel(str(group), fontsize=6, rotation=0, ha="right", va="center")
        for j in range(n):
            _show(axes[row, j + 1], generated[j, cell], limits, f"generated {j + 1}" if row == 0 else None)
    fig.suptitle("Test cells: real nucleus (left) and nuclei generated from the cell's RNA", fontsize=9)
    save_figure(fig, path, dpi=120)
    _caption(path, "Held-out test cells of split 0, grouped by RNA cell type and treatment: each row is one cell, "
                   "its real nucleus (DNA channel) on the left and the nuclei the diffusion generator drew from its "
                   "RNA on the right (same intensity scale). The generator never saw these cells.")


def cycle_sweep_figure(sweep: np.ndarray, centres: np.ndarray, measured: pd.DataFrame, path) -> None:
    """``sweep``: replicates x bins x S x S nuclei drawn from each cycle bin's mean RNA latent;
    ``centres``: the bins' cycle positions (fraction of the cycle); ``measured``: rows with columns
    ``bin``, ``kind`` (real / generated), ``morph_area``, ``morph_dna_integrated``."""
    plt = _pyplot()
    path = Path(path)
    reps, bins = sweep.shape[:2]
    fig = plt.figure(figsize=(1.2 * bins, 1.2 * reps + 2.8), layout="constrained")
    grid = fig.add_gridspec(reps + 2, bins, height_ratios=[1] * reps + [1.3, 1.3])
    limits = np.percentile(sweep, [1, 99.5])
    for r in range(reps):
        for b in range(bins):
            _show(fig.add_subplot(grid[r, b]), sweep[r, b], limits, f"{centres[b]:.2f}" if r == 0 else None)
    for k, (column, label) in enumerate(PROPERTIES[:2]):
        ax = fig.add_subplot(grid[reps + k, :])
        for kind, style in (("real", "o-"), ("generated", "s--")):
            rows = measured[measured["kind"] == kind].groupby("bin")[column].median()
            ax.plot(centres[rows.index.to_numpy(int)], rows.to_numpy(), style, label=kind)
        ax.set_ylabel(label, fontsize=7)
        ax.legend(fontsize=6)
    ax.set_xlabel("RNA cell-cycle position (fraction of the cycle)")
    fig.suptitle("Nuclei generated along the RNA cell cycle", fontsize=9)
    save_figure(fig, path, dpi=120)
    _caption(path, "Cells binned by their RNA cell-cycle position (cell_cycle stage); top: nuclei generated from "
                   "each bin's mean RNA latent (columns: bin centre, rows: replicates). Bottom: median area and "
                   "integrated DNA of real nuclei and of nuclei generated from each cell's own RNA, per bin "
                   "(measured with the workflow's extractor). Nuclei should grow and gain DNA from G1 to G2/M.")


def distributions_figure(real: pd.DataFrame, generated: pd.DataFrame, path) -> None:
    """Histograms of :data:`PROPERTIES` for real and generated nuclei (rows where a nucleus was found)."""
    plt = _pyplot()
    path = Path(path)
    fig, axes = plt.subplots(1, len(PROPERTIES), figsize=(4 * len(PROPERTIES), 3))
    for ax, (column, label) in zip(axes, PROPERTIES):
        values = [t[column].to_numpy(float) for t in (real, generated)]
        values = [v[np.isfinite(v)] for v in values]
        if not all(len(v) for v in values):
            ax.set_title(f"{label}: no nucleus found")
            continue
        edges = np.histogram_bin_edges(np.concatenate(values), bins=30)
        for v, name in zip(values, ("real", "generated")):
            ax.hist(v, bins=edges, density=True, alpha=0.5, label=f"{name} (n = {len(v)})")
        ax.set_xlabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Measured properties of real and generated nuclei (test cells)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    _caption(path, "Area, integrated DNA and eccentricity of the real nuclei of the test cells and of the nuclei "
                   "generated from their RNA, all measured by the same central-nucleus segmentation and region "
                   "properties (cosmic.evaluation.images.measure_crops).")
