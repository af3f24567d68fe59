"""The stage's figures (``figures/<name>.png`` with a ``<name>.txt`` caption beside each): the
score plane, DNA content by RNA phase, area and DNA content along the cycle, phase confusion
matrices and nuclei along the cycle."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..plotting import not_available, save_figure
from .params import PHASE_COLORS, PHASES, TWO_PI


def draw_figures(figdir: Path, cells, info: dict, dna_model, confusions: dict, images: dict, n_bins: int,
                 adata, names: list[str]) -> None:
    """Every figure in :data:`~cosmic.layout.CELL_CYCLE_FIGURES`, each with its caption, under ``figdir``."""
    figdir.mkdir(parents=True, exist_ok=True)
    _fig_score_plane(cells, info, figdir)
    _fig_dna_content(cells, dna_model, figdir)
    _fig_along_cycle(cells, info, n_bins, figdir)
    _fig_confusion(confusions, figdir)
    _fig_nuclei(images, cells, n_bins, figdir, adata, names)


def _caption(figdir: Path, name: str, text: str):
    with atomic_path(figdir / f"{name}.txt") as tmp:
        Path(tmp).write_text(text.strip() + "\n")


def _plt():
    from ..plotting import _pyplot

    return _pyplot()


def _fig_score_plane(cells, info, figdir):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ax = axes[0]
    for ph in PHASES:
        sel = cells["phase_position"] == ph
        ax.scatter(cells.loc[sel, "S_score"], cells.loc[sel, "G2M_score"], s=6, alpha=0.6, color=PHASE_COLORS[ph],
                   label=f"{ph} ({int(sel.sum())})")
    ax.axhline(0, color="grey", lw=0.6, ls=":")
    ax.axvline(0, color="grey", lw=0.6, ls=":")
    ax.set_title("Tirosh scores (colour: phase from the cycle position)")
    ax.set_xlabel("S score (scanpy)")
    ax.set_ylabel("G2/M score (scanpy)")
    ax.legend(fontsize=8, markerscale=2)
    ax = axes[1]
    plane = info["plane"]
    sc_ = ax.scatter(plane[:, 0], plane[:, 1], c=cells["cycle_position"], cmap="twilight", vmin=0, vmax=TWO_PI, s=6)
    r = np.percentile(np.hypot(plane[:, 0], plane[:, 1]), 95)
    for ph, ang in info["peaks"].items():
        a = ang - info["plane_offset"]
        ax.plot([0, r * math.cos(a)], [0, r * math.sin(a)], color=PHASE_COLORS[ph], lw=2)
        ax.annotate(ph, (1.08 * r * math.cos(a), 1.08 * r * math.sin(a)), color=PHASE_COLORS[ph], fontweight="bold",
                    ha="center", va="center")
    ax.plot(0, 0, "k+")
    fig.colorbar(sc_, ax=ax, label="cycle position (radians)")
    what = "PC1/PC2 of z-scored cycle genes, neighbour-averaged" if info["method"] == "pca" \
        else "Tirosh scores around their medians"
    ax.set_title("Cycle position = angle in this plane")
    ax.set_xlabel("plane axis 1 (" + ("PC1" if info["method"] == "pca" else "S score") + ")")
    ax.set_ylabel("plane axis 2 (" + ("PC2" if info["method"] == "pca" else "G2/M score") + ")")
    ax.set_aspect("equal", adjustable="datalim")
    save_figure(fig, figdir / "score_plane.png")
    _caption(figdir, "score_plane",
             "Left: scanpy Tirosh S and G2/M scores per cell, coloured by the phase read from the continuous "
             "position. "
             f"Right: the position plane ({what}); the position is the angle around the origin and lines mark "
             f"where the G1, S and G2/M programmes peak.")


def _fig_dna_content(cells, dna_model, figdir):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if dna_model is None or "dna_n" not in cells:
        not_available(ax, "DNA content by RNA phase", "no DNA-content feature in the morphology",
                      "DNA content (N)", "cells")
        caption = "No DNA-content feature was found among the morphology features, so no DNA histogram is shown."
    else:
        v = cells["dna_n"].to_numpy(float)
        hi = float(np.nanpercentile(v, 99.5)) if np.isfinite(v).any() else 6.0
        hi = max(hi, 5.0)
        bins = np.linspace(0, hi, 70)
        ax.hist(v[np.isfinite(v)], bins=bins, color="lightgrey", label="all cells")
        for ph in PHASES:
            sel = (cells["phase_position"] == ph).to_numpy() & np.isfinite(v)
            ax.hist(v[sel], bins=bins, histtype="step", lw=1.6, color=PHASE_COLORS[ph], label=f"RNA {ph}")
        ratios = [pk["ratio_4N_2N"] for pk in dna_model.peaks().values()]
        ax.axvline(2, color="k", ls="--", lw=1, label="2N peak (mixture)")
        ax.axvline(2 * float(np.median(ratios)), color="k", ls=":", lw=1, label="4N peak (mixture, median)")
        ax.set_title("DNA content by RNA phase")
        ax.set_xlabel("DNA content (N; 2N peak of each sample at 2)")
        ax.set_ylabel("cells")
        ax.legend(fontsize=8)
        caption = ("Integrated DNA intensity scaled per sample so the 2N peak of a two-component Gaussian mixture on "
                   "log DNA content sits at 2; grey: all cells, lines: cells by RNA phase (from the cycle position).")
    save_figure(fig, figdir / "dna_content.png")
    _caption(figdir, "dna_content", caption)


def _binned(position, values, n_bins):
    edges = np.linspace(0, TWO_PI, n_bins + 1)
    idx = np.clip(np.digitize(position, edges) - 1, 0, n_bins - 1)
    mean, err = np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    for b in range(n_bins):
        v = values[(idx == b) & np.isfinite(values)]
        if len(v):
            mean[b] = v.mean()
            err[b] = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return (edges[:-1] + edges[1:]) / 2 / TWO_PI, mean, err


def _fig_along_cycle(cells, info, n_bins, figdir):
    plt = _plt()
    panels = [("area", "nuclear area"), ("dna_n", "DNA content (N)")]
    panels = [(c, lab) for c, lab in panels if c in cells]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), squeeze=False)
    pos = cells["cycle_position"].to_numpy(float)
    if not panels:
        not_available(axes[0, 0], "Nuclear area along the RNA cell-cycle position",
                      "no area or DNA-content feature", "RNA cell-cycle position (fraction of the cycle)",
                      "nuclear area")
    for ax, (col, lab) in zip(axes[0], panels):
        x, m, e = _binned(pos, cells[col].to_numpy(float), n_bins)
        ax.errorbar(x, m, yerr=e, marker="o", capsize=3, label="observed (all cells)")
        gcol = {"area": "area_generated", "dna_n": "dna_n_generated"}[col]
        if gcol in cells and cells[gcol].notna().any():
            x2, m2, e2 = _binned(pos, cells[gcol].to_numpy(float), n_bins)
            ax.errorbar(x2 + 0.005, m2, yerr=e2, marker="s", capsize=3, ls="--",
                        label="COSMIC-generated from RNA (test cells)")
        for ph, ang in info["peaks"].items():
            ax.axvline(ang / TWO_PI, color=PHASE_COLORS[ph], lw=1, ls=":")
            ax.text(ang / TWO_PI, 1.0, ph, color=PHASE_COLORS[ph], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"{lab[0].upper() + lab[1:]} along the RNA cell-cycle position", pad=14)
        ax.set_xlabel("RNA cell-cycle position (fraction of the cycle, bin centre)")
        ax.set_ylabel(f"{lab} (mean, 95% CI)")
        ax.legend(fontsize=8)
    save_figure(fig, figdir / "area_along_cycle.png")
    _caption(figdir, "area_along_cycle",
             f"Mean nuclear area and DNA content in {n_bins} bins of the RNA cell-cycle position (error bars: 95% "
             "confidence intervals); dashed: the same features generated by COSMIC from RNA for held-out cells; "
             "dotted lines: where the G1, S and G2/M programmes peak.")


def _fig_confusion(confusions, figdir):
    plt = _plt()
    titles = {"dna_content": "DNA content (2N/4N mixture)", "classifier_features": "region features (held-out)",
              "classifier_fm": "foundation embedding (held-out)", "generated_dna": "COSMIC-generated DNA content"}
    items = [(k, v) for k, v in confusions.items() if v.get("n", 0) > 0]
    fig, axes = plt.subplots(1, max(1, len(items)), figsize=(4.4 * max(1, len(items)), 4.2), squeeze=False,
                             layout="constrained")
    if not items:
        not_available(axes[0, 0], "RNA vs morphology phase", "no morphology phase calls", "morphology phase",
                      "RNA phase")
    for ax, (k, v) in zip(axes[0], items):
        cm = np.asarray(v["confusion"], dtype=float)
        frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                        color="white" if frac[i, j] > 0.6 else "black", fontsize=9)
        ax.set_xticks(range(len(v["labels"])), v["labels"])
        ax.set_yticks(range(len(v["labels"])), v["labels"])
        ax.set_title(f"{titles.get(k, k)}\naccuracy {v['accuracy']:.2f}, kappa {v['kappa']:.2f}", fontsize=10)
        ax.set_xlabel("morphology phase")
        ax.set_ylabel("RNA phase (from position)")
    save_figure(fig, figdir / "phase_confusion.png")
    _caption(figdir, "phase_confusion",
             "Cells by RNA phase (rows, from the cycle position) and phase read from morphology (columns); colour: "
             "row fraction, numbers: cells. Classifier and generated-morphology calls are for cells not used to "
             "fit them.")


def _fig_nuclei(images, cells, n_bins, figdir, adata, names):
    if images["source"] == "none":
        fig, caption = _feature_heatmap(cells, n_bins, adata, names)
    else:
        fig, caption = _nuclei_strip(images, cells, n_bins)
    save_figure(fig, figdir / "nuclei_along_cycle.png")
    _caption(figdir, "nuclei_along_cycle", caption)


def _feature_heatmap(cells, n_bins, adata, names):
    """No images (morphology tables): standardised features along the cycle instead."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, n_bins * 0.9), 4.5))
    xm = np.asarray(adata.obsm["X_morph"], dtype=float) if "X_morph" in adata.obsm else None
    if xm is not None and xm.shape[1]:
        z = (xm - np.nanmean(xm, 0)) / np.where(np.nanstd(xm, 0) > 0, np.nanstd(xm, 0), 1)
        pos = cells["cycle_position"].to_numpy(float)
        mat = np.stack([_binned(pos, z[:, j], n_bins)[1] for j in range(z.shape[1])])
        show = min(len(names), 20)
        order = np.argsort(-np.nanstd(mat, 1))[:show]
        im = ax.imshow(mat[order], aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_yticks(range(len(order)), [names[i].removeprefix("morph_") for i in order], fontsize=7)
        fig.colorbar(im, ax=ax, label="mean z-score")
    ax.set_xticks(range(n_bins), [f"{(b + 0.5) / n_bins:.2f}" for b in range(n_bins)])
    ax.set_title("No nucleus images (morphology from tables): features along the RNA cell-cycle position")
    ax.set_xlabel("RNA cell-cycle position (bin centre, fraction of the cycle)")
    ax.set_ylabel("morphology feature")
    caption = ("No crops or generated images exist for this cohort, so the strip shows the mean standardised "
               "morphology features per bin of the RNA cell-cycle position instead.")
    return fig, caption


def _nuclei_strip(images, cells, n_bins):
    """One row of nuclei per image source, one column per group of the RNA position."""
    plt = _plt()
    rows = images["rows"]
    fig, axes = plt.subplots(len(rows), n_bins, figsize=(1.4 * n_bins, 1.6 * len(rows) + 0.9), squeeze=False)
    for r, (label, row) in enumerate(rows):
        shown = [im for im in row if im is not None]  # one intensity scale per row
        lo, hi = np.percentile(np.concatenate([im.ravel() for im in shown]), [1, 99.8]) if shown else (0, 1)
        for b in range(n_bins):
            ax = axes[r, b]
            im = row[b]
            if im is not None:
                ax.imshow(np.clip((im - lo) / (hi - lo + 1e-9), 0, 1), cmap="gray", vmin=0, vmax=1)
                cell = images["cells"][b]
                if r == 0:
                    ax.set_title(f"{images['centres'][b] / TWO_PI:.2f}\n{cells.at[cell, 'phase_position']}",
                                 fontsize=8)
                ax.set_aspect("equal")
            else:
                ax.text(0.5, 0.5, "no cell", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_ylabel(label, fontsize=8)
    which = ("COSMIC-generated nuclei (decoded from RNA, held-out cells)" if images["source"] == "generated"
             else "Observed nuclei (DNA channel crops)")
    fig.suptitle(f"{which} ordered by RNA cell-cycle position", fontsize=11)
    fig.supxlabel("RNA cell-cycle position (fraction of the cycle) and RNA phase of the cell shown", fontsize=9)
    caption = (f"{which}: cells sorted by RNA cell-cycle position and split into {n_bins} equal-count groups; "
               "the median cell of each group is shown (DNA channel, one intensity scale per row)."
               + (" Second row: the same cells' observed crops." if len(rows) > 1 else ""))
    return fig, caption
