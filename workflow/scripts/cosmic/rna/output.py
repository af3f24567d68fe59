"""Writing the RNA stage's AnnData (also used by the pair and cohort stages)."""

from __future__ import annotations

import anndata

from ..atomic import atomic_path


def write_h5ad(adata: anndata.AnnData, path) -> None:
    """Write ``adata`` to ``path`` atomically (a crashed job leaves no partial file)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
