"""How many demo cells the `pair` stage joined to their true nucleus."""

from __future__ import annotations

import pandas as pd

from .masks import true_label_lookup


def pairing_accuracy(obs: pd.DataFrame, truth: pd.DataFrame, mask_pairs) -> pd.DataFrame:
    """Score pairing against a known truth (the demo): per sample and overall.

    A paired cell is correct when its nucleus (a segmented label) mostly covers the true nucleus
    the generator drew for that barcode. ``mask_pairs`` holds (segmented mask, true mask) paths
    laid out as ``segmentation/<sample>/<image>.mask.tif``.
    """
    lookup = true_label_lookup(mask_pairs)
    sequenced = truth[truth["barcode"].notna()].set_index(["sample", "barcode"])
    rows = []
    for sample, cells in obs.groupby("sample", observed=True):
        true = sequenced.loc[sample]
        correct = 0
        for cell in cells.itertuples():
            expected = true.loc[cell.barcode] if cell.barcode in true.index else None
            if expected is None or expected["image"] != cell.image:
                continue
            got = lookup.get((str(sample), str(cell.image)), {}).get(int(cell.label), 0)
            correct += int(got == int(expected["true_label"]))
        rows.append({"sample": sample, "sequenced_cells": len(true), "paired_cells": len(cells),
                     "correctly_paired": correct})
    table = pd.DataFrame(rows)
    total = table[["sequenced_cells", "paired_cells", "correctly_paired"]].sum()
    table = pd.concat([table, pd.DataFrame([{"sample": "ALL", **total.to_dict()}])], ignore_index=True)
    table["precision"] = table["correctly_paired"] / table["paired_cells"]
    table["fraction_of_cells_linked_to_true_nucleus"] = table["correctly_paired"] / table["sequenced_cells"]
    return table
