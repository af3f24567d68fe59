"""Cell cycle from RNA: Tirosh S / G2M scores, the continuous cycle position and the phase it implies."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import CosmicInputError
from .circular import circular_distance, peak_direction
from .genes import cell_cycle_genes
from .params import G2M_ANCHOR, PHASES, POSITION_METHODS, TWO_PI


def dense(x) -> np.ndarray:
    """``x`` (dense or sparse) as a float64 array."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(0)
    sd[~(sd > 0)] = 1.0
    return (x - x.mean(0)) / sd


def expression_blocks(adata, x=None):
    """Blocks of rows (in order) of the log-normalised expression: ``adata.X`` (``x`` None) or the ``X``
    of the h5ad file at ``x``, read a chunk of cells at a time."""
    from ..cohort_io import matrix_blocks, row_blocks

    for _, _, block in (matrix_blocks(adata.X) if x is None else row_blocks(x)):
        yield block


def _gene_means_and_columns(blocks, n_genes: int, columns: np.ndarray, where: str):
    """One pass over ``blocks``: every gene's mean over all cells, and the ``columns`` of every cell (dense)."""
    total, n, kept = np.zeros(n_genes), 0, []
    for block in blocks:
        values = block.data if sp.issparse(block) else np.asarray(block)
        if np.isnan(values).any():
            raise CosmicInputError(f"{where}: the log-normalised expression holds NaN; re-run the `rna` and "
                                   "`pair` rules of the samples that produced it")
        total += np.asarray(block.sum(0, dtype=np.float64)).ravel()
        n += block.shape[0]
        kept.append(dense(block[:, columns]))
    return total / max(1, n), (np.vstack(kept) if kept else np.zeros((0, len(columns))))


def _anchor_row(gene_means: np.ndarray, block) -> np.ndarray:
    """A row that, stacked under ``block``, makes every gene's mean over the stack rank exactly as
    ``gene_means`` ranks (ties kept): the rank times a power of two so large that adding the block's
    column sums cannot change it in float64. scanpy then bins genes (and draws control genes) as on
    the whole cohort, so each chunk of cells is scored with the cohort's control genes."""
    ranks = pd.Series(gene_means).rank(method="min").to_numpy()
    column_sums = np.abs(np.asarray(block.sum(0, dtype=np.float64))).ravel()
    big = 2.0 ** (54 + int(np.ceil(np.log2(2.0 * column_sums.max(initial=0.0) + 2.0))))
    return big * ranks


def tirosh_scores(adata, s_genes, g2m_genes, seed: int = 0, x=None, gene_means=None) -> pd.DataFrame:
    """``S_score``, ``G2M_score`` and ``phase`` from :func:`scanpy.tl.score_genes_cell_cycle` (random
    control genes drawn with ``seed``) of ``adata.X``, or of the ``X`` of the h5ad file at ``x``.

    Cells are scored a chunk at a time; scanpy's expression bins, from which it draws the control
    genes, come from the gene means of all cells (``gene_means``, computed here when None; see
    :func:`_anchor_row`), so the scores equal those of one call on the whole matrix while memory stays
    at one chunk. ``adata`` is not modified."""
    import anndata as ad
    import scanpy as sc

    var = pd.DataFrame(index=pd.Index(adata.var_names.astype(str)))
    means = gene_means
    if means is None:
        means, _ = _gene_means_and_columns(expression_blocks(adata, x), adata.n_vars, np.array([], dtype=int),
                                           "the cohort" if x is None else str(x))
    frames = []
    for block in expression_blocks(adata, x):
        anchor = _anchor_row(means, block)
        if sp.issparse(block):
            stacked = sp.vstack([sp.csr_matrix(block, dtype=np.float64), sp.csr_matrix(anchor)], format="csr")
        else:
            stacked = np.vstack([np.asarray(block, dtype=np.float64), anchor])
        tmp = ad.AnnData(X=stacked, obs=pd.DataFrame(index=np.arange(stacked.shape[0]).astype(str)), var=var)
        tmp.var_names_make_unique()
        sc.tl.score_genes_cell_cycle(tmp, s_genes=list(s_genes), g2m_genes=list(g2m_genes), random_state=seed)
        frames.append(tmp.obs[["S_score", "G2M_score", "phase"]].iloc[:-1])  # the anchor row is not a cell
    out = pd.concat(frames) if frames else pd.DataFrame(columns=["S_score", "G2M_score", "phase"])
    out["S_score"] = out["S_score"].astype(float)
    out["G2M_score"] = out["G2M_score"].astype(float)
    out["phase"] = out["phase"].astype(str)
    out.index = adata.obs_names
    return out


def _pca_plane(zs_: np.ndarray, zg_: np.ndarray, n_neighbors: int, n_pcs: int, info: dict) -> np.ndarray:
    """PC1/PC2 of the z-scored cycle genes, each cell's PC scores averaged over its neighbours."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    n = zs_.shape[0]
    x = np.hstack([zs_, zg_])
    x = x[:, x.std(0) > 0]
    k = max(2, min(n_pcs, x.shape[1], n - 1))
    if x.shape[1] < 2:
        raise CosmicInputError("the cell-cycle genes do not vary across cells; no position can be computed")
    pca = PCA(n_components=k, svd_solver="full")
    pcs = pca.fit_transform(x)
    info["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_[:2]]
    nn = min(int(n_neighbors), n)
    if nn > 1:
        idx = NearestNeighbors(n_neighbors=nn).fit(pcs).kneighbors(pcs, return_distance=False)
        pcs = pcs[idx].mean(1)
    info["n_neighbors"], info["n_pcs"] = nn if nn > 1 else 0, int(k)
    return pcs[:, :2].copy()


def _score_plane(scores: pd.DataFrame | None) -> np.ndarray:
    """The Tirosh scores around their medians."""
    if scores is None:
        raise ValueError("method='score_plane' needs the Tirosh scores")
    s, g = scores["S_score"].to_numpy(float), scores["G2M_score"].to_numpy(float)
    return np.c_[s - np.median(s), g - np.median(g)]


def cycle_position(expr_s, expr_g2m, n_neighbors: int = 10, n_pcs: int = 10, method: str = "pca",
                   scores: pd.DataFrame | None = None) -> tuple[np.ndarray, dict]:
    """Continuous cell-cycle position (radians in [0, 2π)) from log expression of the S and G2/M
    genes (cells x genes each).

    ``method="pca"``: angle of PC1/PC2 of the z-scored cycle genes after averaging each cell's PC
    scores over its ``n_neighbors`` nearest neighbours in the first ``n_pcs`` PCs.
    ``method="score_plane"``: angle of the Tirosh scores (``scores`` with ``S_score``,
    ``G2M_score``) around their medians. Either way the direction is set so that the S programme
    peaks before the G2/M programme and G2/M before G1 (both low), and the origin so that G2/M
    peaks at 0.9 x 2π. Returns the position and a dict with the programme peaks (``peaks``, in
    position coordinates), the plotted plane (``plane``: cells x 2) and its ``plane_offset``
    (position = plane angle + offset).
    """
    zs_, zg_ = _zscore(dense(expr_s)), _zscore(dense(expr_g2m))
    n = zs_.shape[0]
    if n < 3:
        raise CosmicInputError(f"the cell-cycle position needs at least 3 cells, got {n}")
    s_prog, g_prog = zs_.mean(1), zg_.mean(1)
    info: dict = {"method": method}
    if method == "pca":
        plane = _pca_plane(zs_, zg_, n_neighbors, n_pcs, info)
    elif method == "score_plane":
        plane = _score_plane(scores)
    else:
        raise CosmicInputError(f"cell_cycle position_method must be one of {POSITION_METHODS}, got {method!r}")
    angle = np.arctan2(plane[:, 1], plane[:, 0])
    progs = {"G1": -(s_prog + g_prog), "S": s_prog, "G2M": g_prog}
    peaks = {p: peak_direction(angle, w) for p, w in progs.items()}
    # forward from the S peak, G2/M must come before G1
    flipped = (peaks["G2M"] - peaks["S"]) % TWO_PI > (peaks["G1"] - peaks["S"]) % TWO_PI
    if flipped:
        plane[:, 1] *= -1
        angle = -angle
        peaks = {p: -v for p, v in peaks.items()}
    offset = (G2M_ANCHOR - peaks["G2M"]) % TWO_PI
    position = (angle + offset) % TWO_PI
    info.update(plane=plane, plane_offset=float(offset), reflected=bool(flipped),
                peaks={p: float((v + offset) % TWO_PI) for p, v in peaks.items()},
                programmes={"S": s_prog, "G2M": g_prog})
    return position, info


def phase_from_position(position, peaks: Mapping[str, float]) -> np.ndarray:
    """Phase whose programme peak is nearest on the circle (G1, S, G2M)."""
    position = np.asarray(position, dtype=float)
    names = list(PHASES)
    d = np.stack([circular_distance(position, peaks[p]) for p in names], 1)
    out = np.asarray(names, dtype=object)[d.argmin(1)]
    out[~np.isfinite(position)] = None
    return out


def score_cell_cycle(adata, organism: str = "auto", seed: int = 0, n_neighbors: int = 10,
                     method: str = "pca", min_genes: int = 3, where: str = "input",
                     resources=None, x=None) -> tuple[pd.DataFrame, dict]:
    """Score log-normalised ``adata.X`` (var_names = gene symbols), or the ``X`` of the h5ad file at
    ``x`` read a chunk of cells at a time (then ``adata`` gives only the names).

    Returns a frame indexed like ``adata.obs`` with ``S_score``, ``G2M_score``, ``phase``
    (scanpy / Tirosh), ``cycle_position`` (radians in [0, 2π)), ``phase_position`` (nearest
    programme peak) and the programme z-scores ``S_program``, ``G2M_program``, plus an info dict
    (genes used, peaks, plane coordinates for plotting).
    """
    genes = cell_cycle_genes(adata.var_names, organism, min_genes=min_genes, where=where, resources=resources)
    vn = pd.Index(adata.var_names.astype(str))
    s_columns, g2m_columns = vn.get_indexer(genes.s_genes), vn.get_indexer(genes.g2m_genes)
    # one pass for the gene means (scanpy's bins) and the cycle genes; the scoring pass is the second
    means, expr = _gene_means_and_columns(expression_blocks(adata, x), adata.n_vars,
                                          np.concatenate([s_columns, g2m_columns]), where)
    scores = tirosh_scores(adata, genes.s_genes, genes.g2m_genes, seed=seed, x=x, gene_means=means)
    position, info = cycle_position(expr[:, :len(s_columns)], expr[:, len(s_columns):], n_neighbors=n_neighbors,
                                    method=method, scores=scores)
    out = scores.copy()
    out["cycle_position"] = position
    out["phase_position"] = phase_from_position(position, info["peaks"])
    out["S_program"] = info["programmes"]["S"]
    out["G2M_program"] = info["programmes"]["G2M"]
    info["genes"] = genes.summary()
    return out, info
