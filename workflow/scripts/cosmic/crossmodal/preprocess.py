"""Gene selection, RNA PCA and scalers: every transform fitted on training cells only."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import CosmicInputError
from .representation import FM, MORPH, Representation, named

TAIL_KEY = "X_fm_tail"  # obsm: cached inputs of the encoder stages fine-tuned downstream (crossmodal.finetune)
# Above this many cells x kept genes the RNA PCA is computed from the sparse matrix (implicit centring,
# ARPACK) instead of a dense SVD, whose workspace is many times the matrix (1.1 GB for 14,000 x 2,000).
DENSE_PCA_BUDGET = 2 ** 22


def dense(x) -> np.ndarray:
    """A float32 numpy array of a dense or sparse matrix."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def gene_variances(x) -> np.ndarray:
    """Per-column variance (as ``np.var``) of a dense or sparse matrix, without densifying it:
    two passes over the stored values, the implicit zeros counted once per column."""
    if not sp.issparse(x):
        return np.asarray(x, dtype=np.float32).var(0)
    x = sp.csc_matrix(x, dtype=np.float64)
    n = x.shape[0]
    mean = np.asarray(x.sum(0)).ravel() / n
    nnz = np.diff(x.indptr)
    column = np.repeat(np.arange(x.shape[1]), nnz)
    squares = np.bincount(column, weights=(x.data - mean[column]) ** 2, minlength=x.shape[1])
    return ((squares + (n - nnz) * mean**2) / n).astype(np.float32)


def select_genes(variances: np.ndarray, n_hvg: int) -> np.ndarray:
    """Indices (ascending) of the kept genes: every gene that varies (``n_hvg`` 0), or the ``n_hvg``
    most variable (ties by position)."""
    order = np.argsort(-variances, kind="stable")
    order = order[variances[order] > 0]
    n_keep = len(order) if n_hvg == 0 else min(int(n_hvg), len(order))
    return np.sort(order[:n_keep])


def rna_pca(x, n_pcs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gene_mean, components, singular values)`` of the centred cells x genes matrix ``x`` (dense or
    sparse). Small matrices: an exact dense SVD. Larger sparse ones: scikit-learn's PCA with implicit
    centring (ARPACK, seeded), so the centred matrix is never made dense."""
    n_cells, n_genes = x.shape
    n_pcs = max(1, min(int(n_pcs), n_cells - 1, n_genes))
    if not sp.issparse(x) or n_cells * n_genes <= DENSE_PCA_BUDGET or n_pcs >= min(n_cells, n_genes) - 1:
        xg = dense(x)
        gene_mean = xg.mean(0)
        _, s, vt = np.linalg.svd(xg - gene_mean, full_matrices=False)
        return gene_mean, vt[:n_pcs].astype(np.float32), s[:n_pcs]
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_pcs, svd_solver="arpack", random_state=seed).fit(sp.csr_matrix(x, dtype=np.float64))
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32), pca.singular_values_


def fit_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (1 where constant or undefined), ignoring NaNs."""
    mean = np.nanmean(x, 0)
    std = np.nanstd(x, 0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return np.nan_to_num(mean).astype(np.float32), std.astype(np.float32)


def apply_scaler(x, mean, std) -> np.ndarray:
    """Standardise ``x`` with a fitted scaler; NaNs become 0 (the training mean)."""
    return np.nan_to_num((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32)


class Preprocessor:
    """Gene selection, RNA PCA and scalers, fitted on training cells and stored as plain arrays.

    ``fit`` sees training cells only; ``transform`` applies the frozen state to any cells.
    ``representation`` is the name of the modelled morphology representation (``"fm"`` or
    ``"morph"``, see :mod:`.representation`); the state stores the name.
    """

    def __init__(self, n_hvg: int = 2000, n_pcs: int = 30, representation: str = "morph",
                 covariates: Sequence[str] = ()):
        self.n_hvg, self.n_pcs, self.representation = int(n_hvg), int(n_pcs), representation
        self.covariates = list(covariates)
        self.state: dict | None = None

    # -- fitting ---------------------------------------------------------------------
    def fit(self, adata) -> "Preprocessor":
        """Fit on ``adata`` (training cells only). Only the kept genes are ever densified: with
        ``n_hvg`` set, memory grows with cells x ``n_hvg``, not cells x all genes."""
        genes = select_genes(gene_variances(adata.X), self.n_hvg)
        gene_mean, components, s = rna_pca(adata.X[:, genes], self.n_pcs)
        n_pcs = len(components)
        pc_std = (s / math.sqrt(max(1, adata.n_obs - 1))).astype(np.float32)
        pc_std = np.where(pc_std > 1e-8, pc_std, 1.0).astype(np.float32)
        morph_mean, morph_std = fit_scaler(np.asarray(adata.obsm[MORPH.obsm_key], dtype=np.float32))
        st = dict(gene_index=genes.astype(np.int64), gene_names=np.asarray(adata.var_names[genes]).astype(str),
                  n_genes_input=int(adata.n_vars), gene_mean=gene_mean.astype(np.float32), components=components,
                  pc_std=pc_std, morph_mean=morph_mean, morph_std=morph_std, representation=self.representation,
                  covariate_levels={})
        if named(self.representation) == FM:
            st["fm_mean"], st["fm_std"] = fit_scaler(np.asarray(adata.obsm[FM.obsm_key], dtype=np.float32))
            st["tail"] = TAIL_KEY in adata.obsm
        for c in self.covariates:
            if c not in adata.obs:
                raise CosmicInputError(f"cosmic.covariates names '{c}', which is not an obs column of the cohort; "
                                       f"available: {list(adata.obs.columns)}")
            st["covariate_levels"][c] = sorted(adata.obs[c].astype(str).unique().tolist())
        self.state = st
        return self

    # -- applying --------------------------------------------------------------------
    def _check(self):
        if self.state is None:
            raise RuntimeError("Preprocessor is not fitted")

    @property
    def kind(self) -> Representation:
        """The fitted morphology representation."""
        self._check()
        return named(self.state["representation"])

    @property
    def gene_names(self) -> np.ndarray:
        self._check()
        return self.state["gene_names"]

    def expression(self, adata, sparse: bool = False):
        """Log-normalised expression of the kept genes: dense, or with ``sparse`` a float32 CSR matrix
        when the cohort's is sparse."""
        self._check()
        if adata.n_vars != self.state["n_genes_input"]:
            raise CosmicInputError(f"cohort has {adata.n_vars} genes but the model was fitted on "
                                   f"{self.state['n_genes_input']}")
        kept = adata.X[:, self.state["gene_index"]]
        return sp.csr_matrix(kept, dtype=np.float32) if sparse and sp.issparse(kept) else dense(kept)

    def rna_embedding(self, expr) -> np.ndarray:
        """Standardised PCA scores (training-cell PCA) of kept-gene expression (dense or sparse)."""
        st = self.state
        scores = np.asarray(expr @ st["components"].T) - st["gene_mean"] @ st["components"].T
        return (scores / st["pc_std"]).astype(np.float32)

    def morph_features(self, adata) -> np.ndarray:
        return apply_scaler(adata.obsm[MORPH.obsm_key], self.state["morph_mean"], self.state["morph_std"])

    def representation_of(self, adata) -> np.ndarray:
        """Standardised morphology representation (X_fm or X_morph)."""
        kind = self.kind
        if kind == FM:
            return apply_scaler(adata.obsm[kind.obsm_key], self.state["fm_mean"], self.state["fm_std"])
        return self.morph_features(adata)

    def rep_to_raw(self, rep: np.ndarray) -> np.ndarray:
        """Undo the representation scaler (back to X_fm / X_morph units)."""
        key = self.kind.name  # the scaler is stored as <name>_mean, <name>_std
        return (np.asarray(rep) * self.state[f"{key}_std"] + self.state[f"{key}_mean"]).astype(np.float32)

    def features_to_raw(self, morph: np.ndarray) -> np.ndarray:
        """Undo the region-property scaler (back to X_morph units)."""
        return (morph * self.state["morph_std"] + self.state["morph_mean"]).astype(np.float32)

    def covariate_matrix(self, adata) -> np.ndarray:
        """One-hot covariates over training-cell levels (an unseen level is all zeros)."""
        cols = []
        for c, levels in self.state["covariate_levels"].items():
            v = adata.obs[c].astype(str).to_numpy()
            cols.append((v[:, None] == np.asarray(levels)[None, :]).astype(np.float32))
        return np.concatenate(cols, 1) if cols else np.zeros((adata.n_obs, 0), np.float32)

    def transform(self, adata, sparse_expression: bool = False) -> dict[str, np.ndarray]:
        """All model inputs for the cells of ``adata``; ``expr`` stays a CSR matrix with
        ``sparse_expression`` (and a sparse cohort), so memory follows its stored values."""
        self._check()
        expr = self.expression(adata, sparse=sparse_expression)
        out = dict(expr=expr, rna=self.rna_embedding(expr), rep=self.representation_of(adata),
                   morph=self.morph_features(adata), cov=self.covariate_matrix(adata))
        if self.state.get("tail"):
            out["tail"] = np.asarray(adata.obsm[TAIL_KEY], dtype=np.float32)
        return out

    # -- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict:
        self._check()
        return dict(n_hvg=self.n_hvg, n_pcs=self.n_pcs, representation=self.representation,
                    covariates=self.covariates, state=copy.deepcopy(self.state))

    @classmethod
    def from_state_dict(cls, d: dict) -> "Preprocessor":
        p = cls(d["n_hvg"], d["n_pcs"], d["representation"], d["covariates"])
        p.state = copy.deepcopy(d["state"])
        return p
