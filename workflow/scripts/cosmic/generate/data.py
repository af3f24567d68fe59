"""Inputs of the generator: crops (an N x C x S x S array-like such as a memory-mapped
``crops.npy``, or a :class:`~cosmic.foundation.data.CropBankDataset` over several banks) read a
minibatch at a time, the conditions and the paired mask checked, and the per-channel intensity
scale fitted on training crops."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CosmicInputError
from ..foundation.runtime import _mix


def crop_geometry(crops) -> tuple[int, int, int]:
    """(number of crops, channels, crop size) of an N x C x S x S array-like or crop-bank dataset."""
    if hasattr(crops, "__getitems__") and hasattr(crops, "shape") and len(getattr(crops, "shape") or ()) == 3:
        C, S, S2 = crops.shape  # CropBankDataset: shape is one crop's
        return len(crops), int(C), int(S)
    shape = tuple(getattr(crops, "shape", ()))
    if len(shape) != 4 or shape[2] != shape[3]:
        raise CosmicInputError(f"generate: crops must be an N x C x S x S array (a crops.npy crop bank), "
                               f"got shape {shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def read_crops(crops, idx) -> torch.Tensor:
    """Rows ``idx`` (in that order, repeats allowed) as a float32 tensor; non-finite values -> 0.
    Reads only those rows (in ascending order, as a memory map likes)."""
    idx = np.asarray(idx, dtype=np.int64)
    if hasattr(crops, "__getitems__") and not isinstance(crops, np.ndarray):
        out = crops.__getitems__(idx)
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out, dtype=np.float32))
    order = np.argsort(idx, kind="stable")
    rows = np.asarray(crops[idx[order]], dtype=np.float32)
    out = np.empty_like(rows)
    out[order] = rows
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.from_numpy(out)


def check_inputs(crops, conditions, paired, channels) -> tuple[int, tuple, np.ndarray, np.ndarray]:
    """Check the three inputs against each other. Returns the number of crops, the bank's
    (channels, size), the conditions as an N x d float32 array and the indices of paired crops."""
    n, C, S = crop_geometry(crops)
    if n == 0:
        raise CosmicInputError("generate: no crops to train on; segmentation found no nuclei")
    bad = [c for c in channels if c >= C]
    if bad:
        raise CosmicInputError(f"generate parameter channels {list(channels)}: the crop banks have {C} channel(s) "
                               f"(0..{C - 1}); {bad} do not exist; set generate.channels to bank channels")
    conditions = np.asarray(conditions, dtype=np.float32)
    if conditions.ndim != 2 or conditions.shape[0] != n or conditions.shape[1] < 1:
        raise CosmicInputError(f"generate: conditions must be an N x d array with one row per crop "
                               f"(N = {n}), got shape {conditions.shape}")
    paired = np.asarray(paired)
    if paired.dtype != bool or paired.shape != (n,):
        raise CosmicInputError(f"generate: paired must be a boolean mask with one entry per crop (N = {n}), "
                               f"got {paired.dtype} of shape {paired.shape}")
    paired_idx = np.flatnonzero(paired)
    if not np.isfinite(conditions[paired_idx]).all():
        raise CosmicInputError("generate: the conditions of paired crops contain NaN or infinite values; "
                               "pass the RNA latents of the paired training cells")
    return n, (C, S), conditions, paired_idx


def fit_intensity_scale(crops, channels, seed: int, n_max: int = 2048, chunk: int = 256,
                        q: tuple = (0.1, 99.9)) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) intensity: the ``q`` percentiles of the pixels of up to ``n_max``
    training crops (a seeded random subset, read ``chunk`` crops at a time). A flat channel gets
    high = low + 1."""
    n = crop_geometry(crops)[0]
    rng = np.random.default_rng(_mix(seed, 11))
    rows = np.sort(rng.choice(n, size=min(n, n_max), replace=False))
    parts = [read_crops(crops, rows[a:a + chunk])[:, list(channels)].numpy().astype(np.float32)
             for a in range(0, len(rows), chunk)]
    pix = np.concatenate(parts).transpose(1, 0, 2, 3).reshape(len(channels), -1)
    lo, hi = np.percentile(pix, q, axis=1).astype(np.float64)
    flat = ~(hi - lo > 1e-6 * (1 + np.abs(lo)))
    hi[flat] = lo[flat] + 1.0
    return lo.astype(np.float32), hi.astype(np.float32)
