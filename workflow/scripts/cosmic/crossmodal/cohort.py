"""Reading ``paired/cohort.h5ad`` for the cross-modal stages without holding every gene in memory.

A cohort of 10^5–10^6 cells holds gigabytes of sparse expression (``X`` and ``layers["counts"]``)
while the model reads only the genes the preprocessor keeps. :func:`read_cohort_for_genes` reads
``obs``, ``var``, ``obsm`` and ``uns`` whole, walks ``X`` from disk a chunk of cells at a time, and
keeps the stored values of the candidate genes only (the ``n_hvg`` most variable of the training
cells plus a margin, or every gene that varies). The result has the cohort's full shape, so gene
indices, saved models and :meth:`Preprocessor.transform` work unchanged; the other genes read as
zero. ``layers`` are not read (a gene is detected where its log-normalised ``X`` is positive).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..cohort_io import DiskRows, open_h5ad, read_parts
from .preprocess import select_genes

log = logging.getLogger(__name__)

def train_gene_variances(matrix: DiskRows, train_rows: np.ndarray, progress: Callable = lambda x: x) -> np.ndarray:
    """Per-gene variance over the training rows, streamed (float64 sums of values and squares)."""
    total = np.zeros(matrix.shape[1])
    squares = np.zeros(matrix.shape[1])
    chosen = np.zeros(matrix.shape[0], bool)
    chosen[train_rows] = True
    for start, stop in progress(matrix.chunks()):
        block = matrix.rows(start, stop)[chosen[start:stop]].astype(np.float64)
        total += np.asarray(block.sum(0)).ravel()
        squares += np.asarray(block.multiply(block).sum(0)).ravel()
    n = max(1, len(train_rows))
    mean = total / n
    return np.clip(squares / n - mean ** 2, 0, None)


def candidate_genes(variances: np.ndarray, n_hvg: int) -> np.ndarray:
    """The genes the preprocessor can keep: every gene that varies (``n_hvg`` 0), or the ``n_hvg`` most
    variable plus a margin of 5 % (at least 50), so summation order never changes which genes it keeps."""
    if n_hvg == 0:
        return select_genes(variances, 0)
    return select_genes(variances, n_hvg + max(50, n_hvg // 20))


def read_cohort_for_genes(path, split_of: Callable[[pd.DataFrame], pd.Series], n_hvg: int, progress: bool = True):
    """``(cohort, split)``: the cohort at ``path`` with ``X`` holding only the candidate genes of the training
    cells (see the module docstring) and the split ``split_of(obs)``."""
    import anndata as ad
    from tqdm.auto import tqdm

    path = Path(path)
    with open_h5ad(path, "the paired cohort") as handle:
        parts = read_parts(handle)
        obs, var = parts["obs"], parts["var"]
        split = split_of(obs)
        matrix = DiskRows(handle["X"])
        train_rows = np.flatnonzero((split == "train").to_numpy())

        def bar(desc):
            return lambda items: tqdm(items, desc=desc, disable=not progress, leave=False)

        genes = candidate_genes(train_gene_variances(matrix, train_rows, bar("cosmic: gene variances")), n_hvg)
        blocks = [matrix.rows(start, stop)[:, genes] for start, stop in bar("cosmic: reading kept genes")(matrix.chunks())]
        kept = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(genes)), dtype=np.float32)
        x = sp.csr_matrix((kept.data, genes[kept.indices], kept.indptr), shape=matrix.shape)
        cohort = ad.AnnData(X=x, obs=obs, var=var, obsm=parts["obsm"], uns=parts["uns"])
    log.info("cosmic: read %d of %d genes of %s (%s stored values)", len(genes), matrix.shape[1], path.name,
             f"{x.nnz:,}")
    return cohort, split
