"""Instance-segmentation quality: match predicted to true nuclei by IoU.

``match_instances`` follows the usual object-detection definition used for nuclei
(DSB2018, StarDist, Cellpose papers): a predicted and a true object match when their
intersection over union is at least ``iou_threshold``; the matching is one-to-one and
maximises the total IoU (Hungarian algorithm). Precision = matched / predicted,
recall = matched / true, F1 their harmonic mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from .atomic import atomic_path
from .plotting import save_figure

__all__ = ["match_instances", "evaluate_mask_files", "iou_matrix", "plot_overlays", "write_quality_table"]


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map labels to 0..n (0 stays background) and return (flat labels, n)."""
    flat = np.asarray(labels).ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    if uniq.size and uniq[0] == 0:
        return inv.astype(np.int64), uniq.size - 1
    return inv.astype(np.int64) + 1, uniq.size


def iou_matrix(pred_labels: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
    """Dense n_true x n_pred IoU matrix (labels relabelled to 1..n in sorted order)."""
    if pred_labels.shape != true_labels.shape:
        raise ValueError(
            f"label images differ in shape: pred {pred_labels.shape} vs true {true_labels.shape}"
        )
    p, n_p = _relabel(pred_labels)
    t, n_t = _relabel(true_labels)
    if n_p == 0 or n_t == 0:
        return np.zeros((n_t, n_p), dtype=np.float64)
    ones = np.ones(p.size, dtype=np.int64)
    cont = sparse.coo_matrix((ones, (t, p)), shape=(n_t + 1, n_p + 1)).tocsr()
    area_t = np.asarray(cont.sum(axis=1)).ravel()
    area_p = np.asarray(cont.sum(axis=0)).ravel()
    inter = cont[1:, 1:].tocoo()
    union = area_t[1:][inter.row] + area_p[1:][inter.col] - inter.data
    iou = np.zeros((n_t, n_p), dtype=np.float64)
    iou[inter.row, inter.col] = inter.data / union
    return iou


def match_instances(pred_labels, true_labels, iou_threshold: float = 0.5) -> dict:
    """Match predicted to true instances; return precision, recall, f1, mean_matched_iou, counts.

    With no true and no predicted objects, precision, recall and F1 are 1.0 (nothing to find,
    nothing found wrongly).
    """
    pred_labels = np.asarray(pred_labels)
    true_labels = np.asarray(true_labels)
    iou = iou_matrix(pred_labels, true_labels)
    n_true, n_pred = iou.shape
    if n_true and n_pred:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        ok = iou[rows, cols] >= iou_threshold
        matched = iou[rows, cols][ok]
    else:
        matched = np.zeros(0)
    n_matched = int(matched.size)
    precision = n_matched / n_pred if n_pred else float(n_true == 0)
    recall = n_matched / n_true if n_true else float(n_pred == 0)
    denom = n_pred + n_true
    f1 = 2 * n_matched / denom if denom else 1.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "mean_matched_iou": float(matched.mean()) if n_matched else 0.0,
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "n_matched": n_matched,
        "iou_threshold": float(iou_threshold),
    }


def _sample_image(mask_path) -> tuple[str, str]:
    """(sample, image) from a workflow mask path ``.../segmentation/<sample>/<image>.mask.tif``."""
    path = Path(mask_path)
    return path.parent.name, path.name.removesuffix(".mask.tif")


def evaluate_mask_files(pairs, iou_threshold: float = 0.5) -> pd.DataFrame:
    """Score predicted masks against true masks: one row per image plus an ``ALL`` row.

    ``pairs`` holds (predicted mask path, true mask path). The ``ALL`` row pools the matches
    of every image (micro average), so large images weigh more than in a mean of F1s.
    """
    rows = []
    for pred_path, true_path in pairs:
        sample, image = _sample_image(pred_path)
        scores = match_instances(tifffile.imread(pred_path), tifffile.imread(true_path), iou_threshold)
        rows.append({"sample": sample, "image": image, **scores})
    table = pd.DataFrame(rows)
    if len(table):
        tp, n_pred, n_true = table["n_matched"].sum(), table["n_pred"].sum(), table["n_true"].sum()
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        pooled = {
            "sample": "ALL", "image": "ALL", "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "mean_matched_iou": float(np.average(table["mean_matched_iou"].fillna(0), weights=table["n_matched"]))
            if tp else float("nan"),
            "n_true": int(n_true), "n_pred": int(n_pred), "n_matched": int(tp), "iou_threshold": iou_threshold,
        }
        table = pd.concat([table, pd.DataFrame([pooled])], ignore_index=True)
    return table


def write_quality_table(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")


def plot_overlays(pairs, path, images=None, n_panels: int = 2, window: int = 256) -> None:
    """Predicted (red) and true (green) outlines over the DNA channel for a few images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from .imageio import read_image

    pairs = list(pairs)[:n_panels]
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(6 * max(len(pairs), 1), 6), squeeze=False)
    for ax, k in zip(axes[0], range(len(pairs))):
        pred, true = (tifffile.imread(p) for p in pairs[k])
        h, w = pred.shape
        top, left = max((h - window) // 2, 0), max((w - window) // 2, 0)
        sl = (slice(top, top + window), slice(left, left + window))
        if images is not None:
            dna = read_image(images[k]).dna[sl]
            lo, hi = np.percentile(dna, [1, 99.8])
            ax.imshow(np.clip((dna - lo) / (hi - lo + 1e-9), 0, 1), cmap="gray")
        else:
            ax.imshow(np.zeros((min(window, h), min(window, w))), cmap="gray")
        overlay = np.zeros(pred[sl].shape + (4,))
        overlay[find_boundaries(true[sl], mode="inner")] = (0, 1, 0, 1)
        overlay[find_boundaries(pred[sl], mode="inner")] = (1, 0, 0, 1)
        ax.imshow(overlay)
        sample, image = _sample_image(pairs[k][0])
        scores = match_instances(pred, true)
        ax.set_title(f"{sample} / {image}: F1@0.5 = {scores['f1']:.3f}")
        ax.set_xlabel(f"x (px, from {left})")
        ax.set_ylabel(f"y (px, from {top})")
    fig.suptitle("Segmentation (red) vs true nuclei (green)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
