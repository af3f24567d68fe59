"""Sparse expression for training: cells x kept genes stay a CSR matrix and only a batch of rows is
made dense, so memory follows the stored values, not cells x genes."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .preprocess import gene_variances

# Rows made dense at once when a whole matrix is walked through (about 2^24 values: 64 MB of float32).
CHUNK_VALUES = 2 ** 24


class SparseRows:
    """A cells x genes CSR matrix that indexes like a float32 tensor on ``device``: ``rows[idx]``
    (a slice, index tensor or array) returns those rows dense."""

    def __init__(self, matrix, device="cpu"):
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.device = torch.device(device)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        if torch.is_tensor(idx):
            idx = idx.cpu().numpy()
        return torch.from_numpy(self.matrix[idx].toarray()).to(self.device)

    def column_variances(self) -> np.ndarray:
        return gene_variances(self.matrix)

    def fingerprint_bytes(self) -> list[bytes]:
        m = self.matrix
        return [np.ascontiguousarray(a).tobytes() for a in (m.indptr, m.indices, m.data)]


def as_batchable(value, device):
    """A float32 tensor on ``device`` of an array, or :class:`SparseRows` of a sparse matrix."""
    if isinstance(value, SparseRows):
        return SparseRows(value.matrix, device)
    if sp.issparse(value):
        return SparseRows(value, device)
    return torch.as_tensor(value, dtype=torch.float32, device=device)


def n_rows(data: dict) -> int:
    return len(next(iter(data.values())))


def row_chunks(data: dict, values: int = CHUNK_VALUES) -> list[slice]:
    """Row slices covering every array of ``data`` with about ``values`` dense values per chunk (the
    widest array decides)."""
    width = max(v.shape[1] if len(v.shape) > 1 else 1 for v in data.values())
    n = n_rows(data)
    size = max(1, values // max(1, width))
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def take(data: dict, idx) -> dict:
    """The rows ``idx`` of every array of ``data``, dense."""
    return {k: v[idx] for k, v in data.items()}
