"""Segmented nuclei matched to the demo's true nuclei (the true label covering most of each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile


def majority_true_label(pred_mask: np.ndarray, true_mask: np.ndarray) -> dict[int, int]:
    """For each predicted label, the true label covering most of its pixels (0 = background)."""
    fg = pred_mask > 0
    pairs = pd.DataFrame({"pred": pred_mask[fg].ravel(), "true": true_mask[fg].ravel()})
    counts = pairs.value_counts().reset_index(name="n").sort_values("n", ascending=False)
    best = counts.drop_duplicates("pred")
    return dict(zip(best["pred"].astype(int), best["true"].astype(int)))


def true_label_lookup(mask_pairs) -> dict[tuple[str, str], dict[int, int]]:
    """(sample, image) -> {segmented label: true label} for (segmented mask, true mask) path pairs.

    Segmented masks are laid out as ``segmentation/<sample>/<image>.mask.tif``.
    """
    lookup: dict[tuple[str, str], dict[int, int]] = {}
    for pred_path, true_path in mask_pairs:
        pred_path = Path(pred_path)
        key = (pred_path.parent.name, pred_path.name.removesuffix(".mask.tif"))
        lookup[key] = majority_true_label(tifffile.imread(pred_path), tifffile.imread(true_path))
    return lookup
