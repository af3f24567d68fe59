"""Which nuclei the "nuclei along the cycle" figure shows: COSMIC-generated images of held-out cells
when the rule gives them, else the observed crops, one median cell per group of the RNA position."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def _representatives(position, n_bins, candidates):
    """Split the candidate cells, ordered by position, into ``n_bins`` equal-count groups and
    take the median cell of each: returns (positions of the chosen cells, row indices)."""
    cand = np.asarray(candidates, dtype=int)
    cand = cand[np.isfinite(position[cand])]
    cand = cand[np.argsort(position[cand], kind="stable")]
    groups = [g for g in np.array_split(cand, n_bins)]
    reps = [int(g[len(g) // 2]) if len(g) else None for g in groups]
    centres = np.array([position[r] if r is not None else np.nan for r in reps])
    return centres, reps


def _generated_bank(generated_images, pred):
    """The generated images ((1 + samples) x cells x C x S x S, memory-mapped) when the file exists
    and matches the predictions, else None."""
    gen_path = Path(generated_images) if generated_images else None
    if gen_path is None or not gen_path.exists() or pred is None:
        return None
    arr = np.load(gen_path, mmap_mode="r")
    if arr.ndim == 5 and arr.shape[1] == pred.n_obs:
        return arr
    log.warning("cell_cycle: %s has shape %s, not (1 + samples) x %d cells x C x S x S; not used",
                gen_path, arr.shape, pred.n_obs)
    return None


def _crop_banks(crops: Mapping[str, str] | None, adata) -> dict:
    """Sample -> memory-mapped crop bank, for the samples whose bank exists."""
    banks = {}
    if crops and "crop_index" in adata.obs:
        for s, path in dict(crops).items():
            if path is not None and Path(path).exists():
                banks[str(s)] = np.load(path, mmap_mode="r")
    return banks


def strip_images(cells: pd.DataFrame, pred, generated_images, crops, adata, test_rows, n_bins: int,
                 dna_channel: int) -> dict:
    """Images for the nuclei strip: generated (test cells) when available, else observed crops.

    Returns ``source`` ("generated", "observed" or "none"), the chosen ``cells`` (rows of
    ``cells``), their positions ``centres`` and ``rows`` of (label, one image or None per group).
    """
    pos = cells["cycle_position"].to_numpy(float)
    out = {"source": "none", "rows": []}
    gen = _generated_bank(generated_images, pred)
    crop_banks = _crop_banks(crops, adata)

    def crop_of(row):
        s = cells.at[row, "sample"]
        bank = crop_banks.get(str(s))
        if bank is None:
            return None
        ci = int(adata.obs["crop_index"].iloc[row])
        return np.asarray(bank[ci, min(dna_channel, bank.shape[1] - 1)], dtype=np.float32)

    if gen is not None:
        pred_index = pd.Series(np.arange(pred.n_obs), index=pred.obs_names.astype(str))
        centres, reps = _representatives(pos, n_bins, test_rows)
        gen_row = [np.asarray(gen[0, pred_index[cells.at[r, "cell_id"]], min(dna_channel, gen.shape[2] - 1)],
                              dtype=np.float32) if r is not None else None for r in reps]
        out = {"source": "generated", "centres": centres, "cells": reps,
               "rows": [("COSMIC-generated (mean)", gen_row)]}
        if crop_banks:
            out["rows"].append(("observed crop", [crop_of(r) if r is not None else None for r in reps]))
    elif crop_banks:
        candidates = [i for i in range(len(cells)) if str(cells.at[i, "sample"]) in crop_banks]
        centres, reps = _representatives(pos, n_bins, candidates)
        out = {"source": "observed", "centres": centres, "cells": reps,
               "rows": [("observed crop", [crop_of(r) if r is not None else None for r in reps])]}
    return out
