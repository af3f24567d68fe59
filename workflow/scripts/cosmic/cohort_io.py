"""Reading ``paired/cohort.h5ad`` with only the parts a stage needs.

The cohort of a large study holds gigabytes of sparse expression twice (log-normalised ``X`` and
raw ``layers["counts"]``). The analysis stages read ``X``, ``obs``, ``var``, ``obsm`` and ``uns``:
:func:`read_cohort` leaves the layers and pairwise matrices on disk, and :class:`DiskRows` walks
``X`` a chunk of cells at a time without loading it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import CosmicInputError

CHUNK_VALUES = 2 ** 22  # stored values read from disk at a time (32 MB of float32 values + int32 indices)
PARTS = ("obs", "var", "obsm", "uns")


def open_h5ad(path, what: str):
    """The h5ad file at ``path`` open for reading (``what``: how errors name it)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise CosmicInputError(f"{path}: {what} not found; run the rule that writes it first")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise CosmicInputError(f"{path}: unreadable h5ad ({err}); delete it and re-run the rule that writes it") \
            from None


def read_parts(handle, parts=PARTS) -> dict:
    """The named top-level elements of an open h5ad file, read whole (missing ones are None)."""
    import anndata as ad

    return {part: ad.io.read_elem(handle[part]) if part in handle else None for part in parts}


def read_cohort(path, x: bool = True, what: str = "the paired cohort"):
    """The cohort at ``path`` as an in-memory AnnData with ``obs``, ``var``, ``obsm``, ``uns`` and (``x``)
    ``X``; ``layers``, ``obsp``, ``varm`` and ``varp`` stay on disk."""
    import anndata as ad

    with open_h5ad(path, what) as handle:
        parts = read_parts(handle)
        matrix = ad.io.read_elem(handle["X"]) if x and "X" in handle else None
    obs, var = parts["obs"], parts["var"]
    if matrix is None:
        matrix = sp.csr_matrix((len(obs), len(var)), dtype=np.float32)
    return ad.AnnData(X=matrix, obs=obs, var=var, obsm=parts["obsm"], uns=parts["uns"])


def _rows_holding(values: int, row_nnz: float) -> int:
    return max(1, int(values // max(1.0, row_nnz)))


def matrix_blocks(X, values: int | None = None):
    """``(start, stop, block)`` over the rows of an in-memory matrix, about ``values`` stored values each
    (None: :data:`CHUNK_VALUES`); the in-memory counterpart of :func:`row_blocks`."""
    stored = X.nnz if sp.issparse(X) else X.shape[0] * X.shape[1]
    rows = _rows_holding(CHUNK_VALUES if values is None else values, stored / max(1, X.shape[0]))
    if sp.issparse(X):
        X = sp.csr_matrix(X)
    for start in range(0, X.shape[0], rows):
        yield start, min(X.shape[0], start + rows), X[start:start + rows]


class DiskRows:
    """Rows of a matrix of an open h5ad file (``X`` or a layer: sparse CSR/CSC group or dense dataset),
    read on demand."""

    def __init__(self, node):
        import anndata as ad

        self.sparse = node.attrs.get("encoding-type", "") in ("csr_matrix", "csc_matrix")
        self.matrix = ad.io.sparse_dataset(node) if self.sparse else node
        self.shape = tuple(int(v) for v in self.matrix.shape)
        nnz = node["data"].shape[0] if self.sparse else self.shape[0] * self.shape[1]
        self.row_nnz = nnz / max(1, self.shape[0])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return sp.csr_matrix(self.matrix[start:stop], dtype=np.float32)

    def chunk_rows(self, values: int | None = None) -> int:
        """Rows holding about ``values`` stored values (None: :data:`CHUNK_VALUES`)."""
        return _rows_holding(CHUNK_VALUES if values is None else values, self.row_nnz)

    def chunks(self, values: int | None = None) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges of about ``values`` stored values each."""
        size = self.chunk_rows(values)
        return [(start, min(self.shape[0], start + size)) for start in range(0, self.shape[0], size)]

    def blocks(self, rows: np.ndarray | None = None, columns: np.ndarray | None = None, values: int | None = None):
        """CSR blocks (the stored dtype) of the rows ``rows`` (None: all, in order), in that order,
        restricted to ``columns`` (None: all)."""
        n = self.shape[0] if rows is None else len(rows)
        size = self.chunk_rows(values)
        for start in range(0, n, size):
            if rows is None:
                block = sp.csr_matrix(self.matrix[start:start + size])
            else:
                wanted = rows[start:start + size]
                order = np.argsort(wanted, kind="stable")
                block = sp.csr_matrix(self.matrix[wanted[order]])[np.argsort(order)]
            yield block if columns is None else block[:, columns]


def _sources_have(paths, element: str) -> bool:
    import h5py

    for path in paths:
        with h5py.File(path, "r") as handle:
            if element not in handle:
                return False
    return True


def _columns_of(handle, var_names, source) -> np.ndarray | None:
    """Positions of ``var_names`` among the open file's genes (None: the same genes in the same order)."""
    import anndata as ad
    import pandas as pd

    genes = pd.Index(ad.io.read_elem(handle["var"]).index)
    columns = genes.get_indexer(var_names)
    if (columns < 0).any():
        raise ValueError(f"{source}: lacks genes of the output, e.g. {list(pd.Index(var_names)[columns < 0][:3])}")
    return None if np.array_equal(columns, np.arange(len(genes))) else columns


def write_streamed(adata, path, sources, elements=("X", "layers/counts"), values: int | None = None) -> None:
    """Write ``adata``'s annotations (obs, var, obsm, varm, obsp, uns; its X and layers are ignored) to
    ``path`` atomically, with each matrix of ``elements`` copied from the source h5ad files a chunk of
    rows at a time: ``sources`` is a list of ``(path, rows)``, ``rows`` the source rows in output order
    (None: all), stacked in turn and restricted to ``adata.var_names``. An element missing from any
    source is left out. Memory stays at one chunk (``values`` stored values), however many cells."""
    import anndata as ad
    import h5py

    from .atomic import atomic_path

    paths = [p for p, _ in sources]
    shell = ad.AnnData(X=None, obs=adata.obs, var=adata.var, obsm=dict(adata.obsm), varm=dict(adata.varm),
                       obsp=dict(adata.obsp), uns=dict(adata.uns))
    with atomic_path(path) as tmp:
        shell.write_h5ad(tmp, compression="gzip")
        with h5py.File(tmp, "a") as out:
            for element in elements:
                if not _sources_have(paths, element):
                    continue
                parent_name, _, name = element.rpartition("/")
                parent = out.require_group(parent_name) if parent_name else out
                written = None
                for source, rows in sources:
                    with h5py.File(source, "r") as handle:
                        columns = _columns_of(handle, adata.var_names, source)
                        for block in DiskRows(handle[element]).blocks(rows, columns, values):
                            if written is None:
                                ad.io.write_elem(parent, name, block, dataset_kwargs=dict(compression="gzip"))
                                written = ad.io.sparse_dataset(parent[name])
                            else:
                                written.append(block)
                if written is None:  # no rows at all
                    ad.io.write_elem(parent, name, sp.csr_matrix((adata.n_obs, adata.n_vars), dtype=np.float32))
                elif written.shape[0] != adata.n_obs:
                    raise ValueError(f"{path}: wrote {written.shape[0]} rows of {element} for {adata.n_obs} cells")


def read_rows(path, rows: np.ndarray) -> sp.csr_matrix:
    """The rows ``rows`` of the h5ad file's ``X`` (float32), read from disk a chunk at a time."""
    with open_h5ad(path, "the paired cohort") as handle:
        matrix = DiskRows(handle["X"])
        blocks = list(matrix.blocks(np.asarray(rows, dtype=np.int64)))
    if not blocks:
        return sp.csr_matrix((0, matrix.shape[1]), dtype=np.float32)
    return sp.csr_matrix(sp.vstack(blocks, format="csr"), dtype=np.float32)


def row_blocks(path):
    """``(start, stop, CSR block)`` over the h5ad file's ``X``, a chunk of rows at a time."""
    with open_h5ad(path, "the paired cohort") as handle:
        matrix = DiskRows(handle["X"])
        for start, stop in matrix.chunks():
            yield start, stop, matrix.rows(start, stop)
