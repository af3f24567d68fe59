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


class DiskRows:
    """Rows of ``X`` of an open h5ad file (sparse CSR/CSC group or dense dataset), read on demand."""

    def __init__(self, handle):
        import anndata as ad

        node = handle["X"]
        self.sparse = node.attrs.get("encoding-type", "") in ("csr_matrix", "csc_matrix")
        self.matrix = ad.io.sparse_dataset(node) if self.sparse else node
        self.shape = tuple(int(v) for v in self.matrix.shape)
        nnz = node["data"].shape[0] if self.sparse else self.shape[0] * self.shape[1]
        self.row_nnz = nnz / max(1, self.shape[0])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return sp.csr_matrix(self.matrix[start:stop], dtype=np.float32)

    def chunks(self, values: int = CHUNK_VALUES) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges of about ``values`` stored values each."""
        size = max(1, int(values // max(1.0, self.row_nnz)))
        return [(start, min(self.shape[0], start + size)) for start in range(0, self.shape[0], size)]


def _sources_have(paths, element: str) -> bool:
    import h5py

    for path in paths:
        with h5py.File(path, "r") as handle:
            if element not in handle:
                return False
    return True


def _row_blocks(node, rows: np.ndarray | None, columns: np.ndarray | None, values: int):
    """CSR blocks of the rows ``rows`` (None: all, in order) of a sparse h5ad element, in that order,
    restricted to ``columns`` (None: all)."""
    import anndata as ad

    matrix = ad.io.sparse_dataset(node)
    n = matrix.shape[0] if rows is None else len(rows)
    row_nnz = node["data"].shape[0] / max(1, matrix.shape[0])
    size = max(1, int(values // max(1.0, row_nnz)))
    for start in range(0, n, size):
        stop = min(n, start + size)
        if rows is None:
            block = sp.csr_matrix(matrix[start:stop])
        else:
            wanted = rows[start:stop]
            order = np.argsort(wanted, kind="stable")
            block = sp.csr_matrix(matrix[wanted[order]])[np.argsort(order)]
        yield block if columns is None else block[:, columns]


def write_streamed(adata, path, sources, elements=("X", "layers/counts"), values: int = CHUNK_VALUES,
                   keep_x: bool = False) -> None:
    """Write ``adata``'s annotations (obs, var, obsm, varm, obsp, uns; its X and layers are ignored) to
    ``path`` atomically, with each matrix of ``elements`` copied from the source h5ad files a chunk of
    rows at a time: ``sources`` is a list of ``(path, rows)``, ``rows`` the source rows in output order
    (None: all), stacked in turn and restricted to ``adata.var_names``. An element missing from any
    source is left out. Memory stays at one chunk (``values`` stored values), however many cells.
    ``keep_x``: write ``adata.X`` itself (then ``"X"`` should not be among ``elements``)."""
    import anndata as ad
    import h5py
    import pandas as pd

    from .atomic import atomic_path

    paths = [p for p, _ in sources]
    shell = ad.AnnData(X=adata.X if keep_x else None, obs=adata.obs, var=adata.var, obsm=dict(adata.obsm), varm=dict(adata.varm),
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
                        source_genes = pd.Index(ad.io.read_elem(handle["var"]).index)
                        columns = source_genes.get_indexer(adata.var_names)
                        if (columns < 0).any():
                            raise ValueError(f"{source}: lacks genes of the output, e.g. "
                                             f"{list(adata.var_names[columns < 0][:3])}")
                        columns = None if np.array_equal(columns, np.arange(len(source_genes))) else columns
                        for block in _row_blocks(handle[element], rows, columns, values):
                            if written is None:
                                ad.io.write_elem(parent, name, block, dataset_kwargs=dict(compression="gzip"))
                                written = ad.io.sparse_dataset(parent[name])
                            else:
                                written.append(block)
                if written is None:  # no rows at all
                    ad.io.write_elem(parent, name, sp.csr_matrix((adata.n_obs, adata.n_vars), dtype=np.float32))
                elif written.shape[0] != adata.n_obs:
                    raise ValueError(f"{path}: wrote {written.shape[0]} rows of {element} for {adata.n_obs} cells")


def stack_x(paths, var_names) -> sp.csr_matrix:
    """The ``X`` of the h5ad files at ``paths`` stacked row-wise (float32 CSR over ``var_names``), read a
    chunk of cells at a time into arrays allocated once (no concatenated copies)."""
    import anndata as ad
    import h5py
    import pandas as pd

    var_names = pd.Index(var_names)
    counted = []
    for path in paths:
        with h5py.File(path, "r") as handle:
            columns = pd.Index(ad.io.read_elem(handle["var"]).index).get_indexer(var_names)
            counted.append((path, columns, int(handle["X"]["data"].shape[0])))
    total_rows, total_nnz = 0, sum(n for _, _, n in counted)
    data, indices = np.empty(total_nnz, np.float32), np.empty(total_nnz, np.int32)
    indptr, filled = [np.zeros(1, np.int64)], 0
    for path, columns, _ in counted:
        with h5py.File(path, "r") as handle:
            keep = None if np.array_equal(columns, np.arange(len(columns))) and \
                len(columns) == handle["X"].attrs["shape"][1] else columns
            for block in _row_blocks(handle["X"], None, keep, CHUNK_VALUES):
                block.sort_indices()
                data[filled:filled + block.nnz] = block.data
                indices[filled:filled + block.nnz] = block.indices
                indptr.append(block.indptr[1:].astype(np.int64) + filled)
                filled += block.nnz
                total_rows += block.shape[0]
    return sp.csr_matrix((data[:filled], indices[:filled], np.concatenate(indptr)), shape=(total_rows, len(var_names)))


def read_rows(path, rows: np.ndarray) -> sp.csr_matrix:
    """The rows ``rows`` (ascending) of the h5ad file's ``X``, read from disk a chunk at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    with open_h5ad(path, "the paired cohort") as handle:
        matrix = DiskRows(handle)
        size = max(1, int(CHUNK_VALUES // max(1.0, matrix.row_nnz)))
        blocks = [sp.csr_matrix(matrix.matrix[rows[i:i + size]], dtype=np.float32) for i in range(0, len(rows), size)]
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, matrix.shape[1]), dtype=np.float32)


def row_blocks(path):
    """``(start, stop, CSR block)`` over the h5ad file's ``X``, a chunk of rows at a time."""
    with open_h5ad(path, "the paired cohort") as handle:
        matrix = DiskRows(handle)
        for start, stop in matrix.chunks():
            yield start, stop, matrix.rows(start, stop)
