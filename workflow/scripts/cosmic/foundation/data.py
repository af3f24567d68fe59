"""Training data: crops streamed from the memory-mapped crop banks (:class:`CropBankDataset`),
the region-property targets of the ``features`` objective (:func:`write_feature_targets`,
:class:`CropsWithTargets`) and the step-indexed batch sampler that makes resumption exact
(:class:`StepBatchSampler`)."""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CosmicInputError
from .runtime import _mix


def _open_bank(path):
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError as exc:
        raise CosmicInputError(f"file '{path}': crop bank not found; run the nuclei step first") from exc
    except Exception as exc:
        raise CosmicInputError(f"file '{path}': unreadable crop bank ({exc}); delete it and re-run the nuclei step") from exc
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
        raise CosmicInputError(f"file '{path}': crop bank must be N x C x S x S, got shape {arr.shape}")
    return arr


class CropBankDataset(torch.utils.data.Dataset):
    """All crops of several banks as one corpus of (bank, row) pairs, read lazily.

    Each bank is opened with ``np.load(mmap_mode="r")`` (shape, dtype and the data offset
    of the ``.npy``; memmaps are not pickled to DataLoader workers, they reopen in each
    process). Rows are then read with positioned reads (``os.pread``) at the memmap's
    offset, one read per run of consecutive rows, so only the requested crops are copied
    and no file pages are mapped into the process: resident memory stays flat in the
    corpus size (touching a memmap at random maps whole read-ahead windows, which piles up
    in the resident set over a long run).
    """

    def __init__(self, paths: Sequence):
        self.paths = [str(p) for p in paths]
        shapes = []
        for p in self.paths:
            arr = _open_bank(p)
            shapes.append(arr.shape)
            del arr
        nonempty = [s for s in shapes if s[0] > 0]
        geo = {tuple(s[1:]) for s in nonempty}
        if len(geo) > 1:
            raise CosmicInputError(
                "foundation: crop banks differ in channels or crop size: "
                + "; ".join(f"'{p}' {s[1:]}" for p, s in zip(self.paths, shapes) if s[0] > 0)
                + "; all samples need the same channels and nuclei crop_size")
        self.sizes = np.array([s[0] for s in shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.shape = tuple(nonempty[0][1:]) if nonempty else (tuple(shapes[0][1:]) if shapes else None)
        self._banks: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}

    def __len__(self):
        return int(self.offsets[-1])

    def bank(self, b: int) -> np.ndarray:
        """The memory-mapped bank ``b`` (opened once per process)."""
        if b not in self._banks:
            self._banks[b] = _open_bank(self.paths[b])
        return self._banks[b]

    def _fd(self, b: int) -> int:
        if b not in self._fds:
            self._fds[b] = os.open(self.paths[b], os.O_RDONLY)
        return self._fds[b]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_banks"], state["_fds"] = {}, {}
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def locate(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        b = np.searchsorted(self.offsets, idx, side="right") - 1
        return b, idx - self.offsets[b]

    def read_rows(self, b: int, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted ascending) of bank ``b`` as float32, via positioned reads."""
        mm = self.bank(b)
        if not mm.flags.c_contiguous or not isinstance(mm, np.memmap):
            return np.asarray(mm[rows], dtype=np.float32)
        row_bytes = int(np.prod(mm.shape[1:])) * mm.dtype.itemsize
        out = np.empty((len(rows),) + mm.shape[1:], dtype=mm.dtype)
        mv = memoryview(out.reshape(-1).view(np.uint8))
        fd = self._fd(b)
        # runs of consecutive rows -> one read each, straight into ``out``
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        for seg in np.split(np.arange(len(rows)), breaks):
            if not len(seg):
                continue
            start, want = int(seg[0]) * row_bytes, len(seg) * row_bytes
            pos, got = mm.offset + int(rows[seg[0]]) * row_bytes, 0
            while got < want:
                k = os.preadv(fd, [mv[start + got:start + want]], pos + got)
                if k <= 0:
                    raise CosmicInputError(f"file '{self.paths[b]}': crop bank is truncated; re-run the nuclei step")
                got += k
        return out.astype(np.float32, copy=False)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices):
        b, rows = self.locate(indices)
        out = np.empty((len(rows),) + tuple(self.shape), dtype=np.float32)
        for bank in np.unique(b):
            sel = np.nonzero(b == bank)[0]
            r = rows[sel]
            order = np.argsort(r, kind="stable")
            out[sel[order]] = self.read_rows(int(bank), r[order])
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.from_numpy(out)


# region-property targets of the ``features`` objective
def _feature_table(path, n_crops: int, bank, columns=None):
    """The morphology feature columns of one sample's nuclei table, rows in crop-bank order."""
    import pandas as pd

    from ..nuclei import feature_columns

    try:
        table = pd.read_parquet(path)
    except FileNotFoundError as exc:
        raise CosmicInputError(
            f"file '{path}': nuclei table not found; objective 'features' predicts each nucleus's region "
            "properties from the nuclei.parquet written beside its crops.npy (run the nuclei step), or set "
            "foundation.objective to vicreg or mae") from exc
    except Exception as exc:
        raise CosmicInputError(f"file '{path}': unreadable nuclei table ({exc}); delete it and re-run the nuclei step") from exc
    if len(table) != n_crops:
        raise CosmicInputError(
            f"file '{path}': {len(table)} nuclei, but its crop bank '{bank}' holds {n_crops} crops; "
            "re-run the nuclei step for this sample so both come from the same segmentation")
    if "crop_index" in table.columns:
        table = table.sort_values("crop_index", kind="stable")
        if not np.array_equal(table["crop_index"].to_numpy(), np.arange(n_crops)):
            raise CosmicInputError(f"file '{path}': crop_index is not 0..{n_crops - 1}; re-run the nuclei step")
    cols = feature_columns(table)
    if columns is not None and cols != columns:
        missing, extra = sorted(set(columns) - set(cols)), sorted(set(cols) - set(columns))
        raise CosmicInputError(
            f"file '{path}': its region-property columns differ from the other samples' (missing: "
            f"{', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}); all samples need the "
            "same nuclei feature settings")
    values = table[cols].to_numpy(dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    return cols, values


def write_feature_targets(table_paths: Sequence, crop_paths: Sequence, out_path, clip: float = 5.0) -> dict:
    """Standardise the region properties of every crop of the corpus (``morph_*`` columns of each
    sample's nuclei table, rows in crop-bank order) and write them as one float32 N x F ``.npy``
    (atomically) that training memory-maps. Columns are z-scored over the whole corpus and
    clipped to +-``clip``; missing values become 0 (the mean). Tables are read one at a time, so
    memory holds one sample's table. Returns the columns and their mean and SD."""
    table_paths, crop_paths = [str(p) for p in table_paths], [str(p) for p in crop_paths]
    if len(table_paths) != len(crop_paths):
        raise CosmicInputError(
            f"foundation: {len(table_paths)} nuclei tables for {len(crop_paths)} crop banks; objective "
            "'features' needs each sample's nuclei.parquet, in the order of its crops.npy")
    sizes = [int(_open_bank(c).shape[0]) for c in crop_paths]
    columns, total, total_sq, count = None, None, None, None
    for path, n, bank in zip(table_paths, sizes, crop_paths):
        columns, v = _feature_table(path, n, bank, columns)
        if total is None:
            total, total_sq, count = (np.zeros(len(columns)) for _ in range(3))
        ok = np.isfinite(v)
        total += np.where(ok, v, 0).sum(0)
        total_sq += np.where(ok, v * v, 0).sum(0)
        count += ok.sum(0)
    if not columns:
        raise CosmicInputError(
            f"file '{table_paths[0]}': no region-property (morph_*) columns to predict; objective 'features' "
            "needs them (nuclei step), or set foundation.objective to vicreg or mae")
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    var = np.divide(total_sq, count, out=np.zeros_like(total), where=count > 0) - mean ** 2
    sd = np.sqrt(np.clip(var, 0, None))
    sd[sd <= 1e-12 * (1 + np.abs(mean))] = 1.0  # constant column: all zeros after centring
    with atomic_path(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(sum(sizes), len(columns)))
        start = 0
        for path, n, bank in zip(table_paths, sizes, crop_paths):
            _, v = _feature_table(path, n, bank, columns)
            z = np.clip((v - mean) / sd, -clip, clip)
            out[start:start + n] = np.nan_to_num(z, nan=0.0)
            start += n
        out.flush()
        del out
    return {"columns": columns, "mean": mean.tolist(), "sd": sd.tolist(), "path": str(out_path)}


class CropsWithTargets(torch.utils.data.Dataset):
    """A :class:`CropBankDataset` paired with a memory-mapped N x F target array in corpus order;
    a batch is ``(crops, targets)``."""

    def __init__(self, crops: CropBankDataset, targets_path):
        self.crops, self.targets_path = crops, str(targets_path)
        self._targets = None
        n, self.n_features = np.load(self.targets_path, mmap_mode="r").shape
        if n != len(crops):
            raise CosmicInputError(f"file '{targets_path}': {n} target rows for {len(crops)} crops; delete it")

    def __len__(self):
        return len(self.crops)

    def __getstate__(self):
        return {**self.__dict__, "_targets": None}

    def __getitems__(self, indices):
        if self._targets is None:
            self._targets = np.load(self.targets_path, mmap_mode="r")
        idx = np.asarray(indices, dtype=np.int64)
        return self.crops.__getitems__(idx), torch.from_numpy(np.asarray(self._targets[idx], dtype=np.float32))


def _identity(x):
    return x


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of random corpus indices, a pure function of (seed, step, rank).

    Global step ``s`` covers positions ``s*B*W ... (s+1)*B*W - 1`` of an endless stream of
    per-epoch random permutations of the corpus (epoch ``e`` permuted with seed
    ``(seed, e)``); rank ``r`` of ``W`` takes every W-th of them (rank-strided sharding).
    Starting at ``start_step`` therefore reproduces exactly what an uninterrupted run would
    have drawn, which makes resumption exact.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.start, self.end = int(start_step), int(end_step)
        self.rank, self.world = int(rank), int(world_size)
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self):
        return max(0, self.end - self.start)

    def _perm(self, epoch):
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng(_mix(self.seed, epoch, 17)).permutation(self.n)
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        gb = self.batch_size * self.world
        pos = step * gb + np.arange(self.rank, gb, self.world, dtype=np.int64)
        ep, off = pos // self.n, pos % self.n
        out = np.empty(pos.size, dtype=np.int64)
        for e in np.unique(ep):
            sel = ep == e
            out[sel] = self._perm(int(e))[off[sel]]
        return out.tolist()

    def __iter__(self):
        for s in range(self.start, self.end):
            yield self.batch(s)
