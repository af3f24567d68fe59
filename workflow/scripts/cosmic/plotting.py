"""Figures shared by rules and report notebooks. Every figure has a title and labelled axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> None:
    """Save atomically in the format given by the suffix, then close the figure."""
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def not_available(ax, title: str, reason: str, xlabel: str = "", ylabel: str = "") -> None:
    """An empty panel saying why its figure cannot be drawn (the figure file still exists)."""
    import textwrap

    ax.text(0.5, 0.5, "not available:\n" + textwrap.fill(str(reason), 50), ha="center", va="center",
            fontsize=9, transform=ax.transAxes, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set(title=title, xlabel=xlabel or "—", ylabel=ylabel or "—")


def _stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99.8])
    return np.clip((image - lo) / (hi - lo + 1e-9), 0, 1)


def segmentation_overlay(image_path, mask_path, ax, window: int | None = 384, dna_channel=0, title=None):
    """DNA channel with the segmented outlines, cropped to a central window."""
    import tifffile
    from skimage.segmentation import find_boundaries

    from .imageio import read_image

    dna = read_image(image_path, dna_channel=dna_channel).dna
    mask = tifffile.imread(mask_path)
    if window:
        top, left = max((dna.shape[0] - window) // 2, 0), max((dna.shape[1] - window) // 2, 0)
        dna, mask = dna[top:top + window, left:left + window], mask[top:top + window, left:left + window]
    else:
        top = left = 0
    rgb = np.repeat(_stretch(dna)[..., None], 3, axis=2)
    rgb[find_boundaries(mask, mode="inner")] = (1.0, 0.2, 0.2)
    ax.imshow(rgb)
    ax.set_title(title or f"{Path(image_path).name}: {len(np.unique(mask)) - 1} nuclei in view")
    ax.set_xlabel(f"x (px, from {left})")
    ax.set_ylabel(f"y (px, from {top})")


def dna_content_histogram(tables: dict[str, pd.DataFrame], ax, column="morph_dna_integrated"):
    """Integrated DNA intensity per nucleus, scaled so the G1 (2N) peak sits at 2."""
    for sample, table in tables.items():
        values = table.loc[table["qc_pass"], column].to_numpy(float) if "qc_pass" in table else table[column]
        values = values[np.isfinite(values) & (values > 0)]
        if not len(values):
            continue
        hist, edges = np.histogram(values, bins=80, range=(0, np.percentile(values, 99)))
        g1_peak = edges[np.argmax(hist)] + (edges[1] - edges[0]) / 2
        ax.hist(2 * values / g1_peak, bins=80, range=(0, 6), histtype="step", linewidth=1.5, label=sample)
    for n in (2, 4):
        ax.axvline(n, color="grey", linestyle=":", linewidth=1)
    ax.set_title("DNA content (integrated DAPI, G1 peak = 2N)")
    ax.set_xlabel("DNA content (N)")
    ax.set_ylabel("nuclei")
    ax.legend(fontsize=8)


def area_vs_dna(tables: dict[str, pd.DataFrame], ax):
    for sample, table in tables.items():
        ok = table["qc_pass"] if "qc_pass" in table else slice(None)
        ax.scatter(table.loc[ok, "morph_dna_integrated"], table.loc[ok, "morph_area"], s=4, alpha=0.4, label=sample)
    ax.set_xscale("log")
    ax.set_title("Nuclear area grows with DNA content")
    ax.set_xlabel("integrated DNA intensity (a.u., log scale)")
    ax.set_ylabel("nuclear area (px)")
    ax.legend(fontsize=8, markerscale=3)


def pairing_status_bars(qc: pd.DataFrame, ax):
    """Stacked bars: status of every barcode per sample."""
    counts = qc.groupby(["sample", "status"]).size().unstack(fill_value=0)
    bottom = np.zeros(len(counts))
    for status in counts.columns:
        ax.bar(counts.index.astype(str), counts[status].to_numpy(), bottom=bottom, label=status)
        bottom += counts[status].to_numpy()
    ax.set_title("Pairing outcome of every barcode")
    ax.set_xlabel("sample")
    ax.set_ylabel("barcodes")
    ax.legend(fontsize=7, loc="lower right")
