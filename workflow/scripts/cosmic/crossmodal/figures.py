"""Figures of the cross-modal stage; every ``<name>.png`` is written with its caption ``<name>.txt``.

The `cosmic` rule draws :data:`cosmic.layout.COSMIC_FIGURES` (:func:`stage_figures`); the
`cosmic_nuclei_figure` rule draws the real-vs-generated nuclei (:func:`generated_nuclei_figure`)
from ``predictions.h5ad``, the decoded images and the crop banks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..layout import GENERATED_NUCLEI_FIGURE
from ..plotting import _pyplot, save_figure
from .celltypes import CONFUSION_SOURCES, label_order

FIGURE_NUCLEI = 8  # test cells shown in the real-vs-generated nuclei figure
METHOD_COLOURS = ["C0", "C1", "C2", "C7"]  # cosmic, ridge, knn, mean


def stage_figures(outdir, genes, gene_r2: dict, results: dict, confusion: pd.DataFrame):
    """The figures of the `cosmic` rule: per-gene R², variance decomposition, cell-type confusion."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    gene_r2_figure(outdir, genes, gene_r2)
    variance_figure(outdir, results)
    confusion_figure(outdir, confusion, results["cell_type_transfer"])


def gene_r2_figure(outdir: Path, genes, gene_r2: dict):
    """Held-out per-gene R², genes ranked, beside the ridge and kNN baselines."""
    plt = _pyplot()
    r2 = np.nan_to_num(gene_r2["cosmic"], nan=-1)
    order = np.argsort(-r2)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(np.arange(len(r2)), r2[order], lw=1.5, label="COSMIC")
    for m, c in (("ridge", "C1"), ("knn", "C2")):
        ax.plot(np.arange(len(r2)), np.sort(np.nan_to_num(gene_r2[m], nan=-1))[::-1], lw=1, color=c, label=m)
    for rank, i in enumerate(order[:10]):
        ax.annotate(str(genes[i]), (rank, r2[i]), xytext=(8, -2 - 9 * rank), textcoords="offset points", fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylim(max(-0.3, ax.get_ylim()[0]), None)
    ax.set(xlabel="gene rank (by held-out R²)", ylabel="held-out R² (morphology → expression)",
           title="Per-gene expression explained by morphology (test cells)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, outdir / "gene_r2_ranked.png", dpi=120)
    (outdir / "gene_r2_ranked.txt").write_text(
        "Held-out per-gene R² of expression predicted from morphology, genes ranked; top genes named; "
        "ridge and kNN baselines on the same split.\n")


def variance_figure(outdir: Path, results: dict):
    """Shared-variance fractions both ways with baselines, bootstrap CIs and the oracle when known."""
    plt = _pyplot()
    vd = results["variance_decomposition"]
    oracle = results.get("oracle", {})
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    panels = ((axes[0], "transcriptome_explained_by_morphology", "transcriptome ← morphology",
               ("transcriptome", "oracle_total_r2")),
              (axes[1], "morphology_explained_by_transcriptome", "morphology ← transcriptome",
               ("morphology", "oracle_mean_r2")))
    for ax, key, title, (oracle_part, oracle_key) in panels:
        methods = ["cosmic", "ridge", "knn", "mean"]
        values = [vd[key][m]["value"] for m in methods]
        err = np.array([[vd[key][m]["value"] - vd[key][m]["ci_low"], vd[key][m]["ci_high"] - vd[key][m]["value"]]
                        for m in methods]).T
        ax.bar(methods, values, yerr=np.clip(np.nan_to_num(err), 0, None), capsize=4, color=METHOD_COLOURS)
        ceiling = oracle.get(oracle_part, {}).get(oracle_key)
        if ceiling is not None:
            ax.axhline(ceiling, color="k", ls="--", lw=1, label="oracle ceiling")
            ax.legend(fontsize=8)
        ax.set(title=title, ylabel="fraction of held-out variance explained", xlabel="method")
    fig.suptitle("Variance decomposition (test cells, 95% bootstrap CI)")
    fig.tight_layout()
    save_figure(fig, outdir / "variance_decomposition.png", dpi=120)
    (outdir / "variance_decomposition.txt").write_text(
        "Shared-variance fractions both ways for COSMIC and baselines on the same test cells, 95% bootstrap "
        "intervals over cells; dashed line: oracle ceiling when ground truth is known.\n")


def confusion_figure(outdir: Path, confusion: pd.DataFrame, transfer: dict):
    """Row-normalised confusion matrices side by side (true RNA type x type read from morphology)."""
    plt = _pyplot()
    outdir.mkdir(parents=True, exist_ok=True)
    sources = list(dict.fromkeys(confusion["source"]))
    labels = label_order(confusion["true_label"])
    fig, axes = plt.subplots(1, len(sources), figsize=(4.0 * len(sources) + 0.8, 4.2), squeeze=False,
                             gridspec_kw=dict(wspace=0.35))
    rotate = 90 if max(len(x) for x in labels) * len(labels) > 24 else 0
    for col, (ax, source) in enumerate(zip(axes[0], sources)):
        im = _confusion_panel(ax, confusion[confusion["source"] == source], labels, rotate)
        acc = transfer.get(source)
        name = CONFUSION_SOURCES.get(source, source)
        ax.set(xlabel="type predicted from morphology", ylabel="RNA cell type (test cells)" if col == 0 else "",
               title=f"{name}\naccuracy {acc:.2f}" if acc is not None else name)
        ax.title.set_fontsize(9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="fraction of the RNA type")
    fig.suptitle(f"Cell type read from morphology vs RNA-derived type ({transfer.get('labels', '')} labels, "
                 "test cells)", fontsize=10)
    save_figure(fig, outdir / "cell_type_confusion.png", dpi=120)
    (outdir / "cell_type_confusion.txt").write_text(
        "Confusion matrices on test cells: rows are RNA-derived cell types (Leiden clusters of training cells "
        "transferred to test cells, or cosmic.label_key), columns the type predicted by a logistic regression "
        "trained on observed morphology of training cells and applied to the observed morphology (COSMIC's "
        "representation, and the other observed representation with its own classifier when present), the COSMIC "
        "conditional mean generated from RNA, and one COSMIC sample. Colour: fraction of the row; numbers: cells. "
        "Table: cell_type_confusion.tsv.\n")


def _confusion_panel(ax, table: pd.DataFrame, labels: list[str], rotate: int):
    """One source's matrix: colour = fraction of the row, numbers = cells."""
    frac = table.pivot(index="true_label", columns="predicted_label", values="fraction_of_true") \
        .reindex(index=labels, columns=labels).fillna(0).to_numpy()
    counts = table.pivot(index="true_label", columns="predicted_label", values="n_cells") \
        .reindex(index=labels, columns=labels).fillna(0).to_numpy().astype(int)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 16:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=rotate)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    return im


# ---------------------------------------------------------------------------------------
# real vs generated nuclei (rule `cosmic_nuclei_figure`)
def _real_crops(test_cells, crops: Mapping[str, Any] | None, n: int, dna_channel: int = 0) -> np.ndarray | None:
    """DNA channel of the real crops (cells x S x S) of the first ``n`` test cells; None when any is missing."""
    if not crops or "crop_index" not in test_cells.obs or n == 0:
        return None
    banks, out = {}, []
    for sample, index in zip(test_cells.obs["sample"].astype(str)[:n], test_cells.obs["crop_index"][:n]):
        path = crops.get(sample)
        if path is None or not Path(path).exists() or pd.isna(index):
            return None
        if sample not in banks:
            banks[sample] = np.load(path, mmap_mode="r")
        bank = banks[sample]
        out.append(np.asarray(bank[int(index), min(dna_channel, bank.shape[1] - 1)], dtype=np.float32))
    return np.stack(out)


def generated_nuclei_figure(predictions, generated_images, outdir, crops: Mapping[str, Any] | None = None,
                            dna_channel: int = 0,
                            decode_images: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """Held-out cells: real nucleus, observed embedding decoded, nuclei generated from RNA.

    ``predictions``: ``predictions.h5ad`` (AnnData or path); ``generated_images``: its decoded images
    (array or ``.npy`` path, (1 + n_samples) x cells x C x S x S, index 0 = conditional mean);
    ``crops``: sample -> ``crops.npy`` holding the real nuclei (obs ``crop_index``); ``dna_channel``:
    the DNA channel's index in crops and images; ``decode_images``: the foundation decoder (X_fm units
    -> images), applied to the observed embedding (``obsm["X_morph_observed"]``). Rows whose inputs are
    missing are left out. Writes ``<outdir>/generated_nuclei.png`` and ``.txt``; returns the PNG path.
    """
    import anndata as ad

    cells = ad.read_h5ad(predictions) if isinstance(predictions, (str, Path)) else predictions
    images = np.load(generated_images, mmap_mode="r") if isinstance(generated_images, (str, Path)) \
        else np.asarray(generated_images)
    n = min(FIGURE_NUCLEI, cells.n_obs)

    def dna(img) -> np.ndarray:
        img = np.asarray(img[:n], dtype=np.float32)
        return img[:, min(dna_channel, img.shape[1] - 1)]

    rows = [("generated from RNA\n(mean)", dna(images[0]))]
    rows += [(f"generated from RNA\n(sample {i + 1})", dna(images[1 + i])) for i in range(min(2, len(images) - 1))]
    if decode_images is not None:
        rows.insert(0, ("observed embedding,\ndecoded", dna(decode_images(cells.obsm["X_morph_observed"][:n]))))
    real = _real_crops(cells, crops, n, dna_channel)
    if real is not None:
        rows.insert(0, ("real nucleus", real[:n]))
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{GENERATED_NUCLEI_FIGURE}.png"
    _nuclei_grid(rows, n, path)
    path.with_suffix(".txt").write_text(
        "Columns: test cells (never seen in training). Rows: "
        + ("the real nucleus (DNA channel crop); " if real is not None else "")
        + ("the foundation decoder applied to the cell's observed embedding (what the decoder can render); to "
           if decode_images is not None else "the foundation decoder applied to ")
        + "the COSMIC conditional mean generated from the cell's RNA; and to COSMIC samples from the same RNA "
          "(what the transcriptome leaves undetermined). One grey scale per column.\n")
    return path


def _nuclei_grid(rows: list[tuple[str, np.ndarray]], n: int, path: Path):
    """Rows of images (name, cells x S x S) for ``n`` cells; one grey scale per column (its first row),
    so size and brightness compare down the column."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n, 1.45 * len(rows) + 0.5), squeeze=False)
    for j in range(n):
        lo, hi = np.percentile(rows[0][1][j], [1, 99.5])
        for r, (name, arr) in enumerate(rows):
            axes[r, j].imshow(arr[j], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
            if j == 0:
                axes[r, j].set_ylabel(name, fontsize=7)
    fig.suptitle("Held-out cells: real nucleus and nuclei generated from the cell's transcriptome")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
