"""Crops of given cells read through the per-sample crop banks (``nuclei/<sample>/crops.npy``) by the
cells' obs ``sample`` and ``crop_index``, a minibatch at a time."""

from __future__ import annotations

import numpy as np

from .errors import CosmicInputError


class CellCrops:
    """The crops of given cells (obs ``sample``, ``crop_index``) as one N x C x S x S array-like over the
    per-sample crop banks, read a minibatch at a time (memory-mapped; nothing is copied up front)."""

    def __init__(self, banks: dict, samples: np.ndarray, crop_index: np.ndarray):
        missing = sorted(set(map(str, samples)) - set(banks))
        if missing:
            raise CosmicInputError(f"no crop bank for sample(s) {missing}; the rule's crop inputs must "
                                   "cover every sample of the cohort")
        self.banks = {s: np.load(p, mmap_mode="r") for s, p in banks.items()}
        self.samples, self.crop_index = np.asarray(samples).astype(str), np.asarray(crop_index, dtype=np.int64)
        first = next(iter(self.banks.values()))
        self.shape = (len(self.samples),) + tuple(first.shape[1:])
        self.dtype = np.float32

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        out = np.empty((len(idx),) + self.shape[1:], dtype=np.float32)
        for sample in np.unique(self.samples[idx]):
            rows = np.flatnonzero(self.samples[idx] == sample)
            index = self.crop_index[idx[rows]]
            order = np.argsort(index, kind="stable")
            out[rows[order]] = self.banks[sample][index[order]]
        return out
