"""Segmented nuclei annotated with their true state; linear probes of the foundation embedding."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .masks import true_label_lookup


def annotate_nuclei(nuclei: pd.DataFrame, mask_pairs, truth: pd.DataFrame) -> pd.DataFrame:
    """Add the true state of each segmented nucleus (the true nucleus covering most of it).

    ``mask_pairs`` holds (segmented mask, true mask) paths laid out as
    ``segmentation/<sample>/<image>.mask.tif``. Nuclei that cover mostly background (debris,
    micronuclei) get ``true_label`` 0 and missing truth columns.
    """
    lookup = true_label_lookup(mask_pairs)
    out = nuclei.copy()
    out["true_label"] = [
        lookup.get((str(s), str(i)), {}).get(int(label), 0)
        for s, i, label in zip(out["sample"], out["image"], out["label"])
    ]
    columns = ["sample", "image", "true_label", "cell_type", "phase", "cycle_position", "treatment",
               "response", "dna_content", "polyploid", "mitotic_arrest", "barcode"]
    truth = truth[[c for c in columns if c in truth.columns]]
    return out.merge(truth, on=["sample", "image", "true_label"], how="left", suffixes=("", "_true"))


PROBE_TARGETS = ("cell_type", "phase", "treatment")


def probe_representations(annotated: pd.DataFrame, representations: dict, seed: int = 0,
                          n_splits: int = 1) -> pd.DataFrame:
    """Held-out linear-probe accuracy of each representation for the demo's true labels.

    ``annotated`` comes from :func:`annotate_nuclei` (rows aligned with the representations);
    nuclei without a true match (debris, micronuclei) are left out.
    """
    from ..foundation import evaluate_representations

    keep = (annotated["true_label"] > 0).to_numpy() & annotated["cell_type"].notna().to_numpy()
    labels = {t: annotated.loc[keep, t].astype(str).to_numpy() for t in PROBE_TARGETS if t in annotated}
    reps = {name: np.nan_to_num(np.asarray(x, dtype=np.float64)[keep]) for name, x in representations.items()}
    return evaluate_representations(reps, labels, seed=seed, n_splits=n_splits)
