"""Agreement of phase calls (accuracy, kappa, confusion) and of the RNA position with a measured
angle, the ``rna_pc_angle`` baseline, and the ``position_agreement.tsv`` table.

Baseline ``rna_pc_angle`` (:func:`rna_pc_angle`)
    The plain angle ``atan2(PC2, PC1)`` of the cells' RNA PCA scores, in radians [0, 2π)
    (``cells.tsv``: ``rna_pc_angle``; as a fraction of the cycle ``rna_pc_angle_fraction``). The
    scores are the cohort's RNA PCA ``obsm["X_pca"]`` (the pairing stage's joint, seeded PCA of the
    log expression over the highly variable genes, which is also ``obsm["X_rna"]`` with
    ``pairing.embedding: pca``); without it, a seeded PCA (centred, unscaled) of the log expression
    ``X`` over all genes. No smoothing, orientation or origin: the agreement is offset- and
    direction-free, so none is needed. It is scored with exactly the function the position is
    scored with (:func:`~cosmic.cell_cycle.circular.circular_agreement`) on the same cells.

``position_agreement.tsv`` (:func:`position_agreement_rows`, :func:`write_position_agreement`)
    Long format, one row per (reference, method) plus one paired-difference row per reference;
    read it with ``pd.read_csv(path, sep="\\t")``. Columns:

    * ``direction`` = ``cell_cycle``, ``space`` = ``rna``, ``metric`` = ``position_agreement``
      (the offset-free agreement, higher is better);
    * ``method``: ``cosmic`` (the stage's ``cycle_position``) or ``rna_pc_angle`` (the baseline);
    * ``baseline``: empty on the two score rows; ``rna_pc_angle`` on the difference row
      (``method`` = ``cosmic``), whose ``mean``/``ci_*`` are empty and whose ``diff_mean``,
      ``diff_ci_low``, ``diff_ci_high`` hold ``cosmic − rna_pc_angle`` (empty on score rows);
    * ``reference``: ``fucci_theta`` (``cell_cycle.reference_angle_key`` = ``theta``; another key
      gives ``reference_<key>``) or ``demo_truth`` (the demo's true ``cycle_position``);
    * ``mean``: the agreement on all cells where the position, the baseline and the reference are
      finite; ``ci_low``/``ci_high``: 95 % percentile bootstrap over those cells (``n_boot``
      resamples, default 200, seeded with ``cell_cycle.seed``); the difference is bootstrapped
      paired (both methods on the same resampled cells), and ``diff_mean`` is the difference of the
      two ``mean`` values;
    * ``n_cells``, ``n_boot``.

    Without any reference (no reference angle, no demo truth) the file holds the header only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import CosmicInputError
from .circular import circular_agreement, circular_scores
from .params import PHASES, TWO_PI

BASELINE = "rna_pc_angle"
N_BOOT = 200
AGREEMENT_COLUMNS = ["direction", "space", "metric", "method", "baseline", "reference", "mean", "ci_low", "ci_high",
                     "diff_mean", "diff_ci_low", "diff_ci_high", "n_cells", "n_boot"]


def phase_agreement(reference, predicted, labels: Sequence[str] = PHASES) -> dict:
    """Accuracy, balanced accuracy, Cohen's kappa and the confusion matrix (rows: reference)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix

    r = pd.Series(reference, dtype=object).to_numpy()
    p = pd.Series(predicted, dtype=object).to_numpy()
    ok = pd.notna(r) & pd.notna(p)
    r, p = r[ok].astype(str), p[ok].astype(str)
    labels = list(labels)
    out = {"n": int(ok.sum()), "labels": labels}
    if not len(r):
        return out | {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "kappa": float("nan"),
                      "confusion": [[0] * len(labels) for _ in labels]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bal = balanced_accuracy_score(r, p)
        kappa = cohen_kappa_score(r, p, labels=labels)
    return out | {"accuracy": float(accuracy_score(r, p)), "balanced_accuracy": float(bal),
                  "kappa": float(kappa), "confusion": confusion_matrix(r, p, labels=labels).tolist()}


def reference_angle_agreement(obs: pd.DataFrame, key: str, cells: pd.DataFrame, where: str) -> dict:
    """RNA position against an independently measured cycle angle (e.g. FUCCI theta) in ``obs[key]``;
    adds the angle to ``cells`` as ``reference_<key>``. With ``cells["rna_pc_angle"]`` the baseline's
    scores on the same cells are added as ``baseline_rna_pc_angle``."""
    if key not in obs:
        raise CosmicInputError(f"{where}: cell_cycle.reference_angle_key '{key}' is not an obs column; "
                               f"obs has {list(obs.columns)[:25]}.")
    angle = pd.to_numeric(obs[key], errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(angle)
    if ok.sum() < 10:
        raise CosmicInputError(f"{where}: obs['{key}'] has {int(ok.sum())} numeric angles; need at least 10.")
    angle = np.mod(angle, TWO_PI)
    position = cells["cycle_position"].to_numpy(np.float64)
    cells[f"reference_{key}"] = np.where(ok, angle, np.nan)
    out = {"key": key, "n": int(ok.sum()), **circular_scores(position[ok], angle[ok])}
    if BASELINE in cells:
        out[f"baseline_{BASELINE}"] = circular_scores(cells[BASELINE].to_numpy(np.float64)[ok], angle[ok])
    return out


def reference_name(key: str) -> str:
    """The ``reference`` column of ``position_agreement.tsv`` for ``cell_cycle.reference_angle_key``."""
    return "fucci_theta" if key == "theta" else f"reference_{key}"


# ---------------------------------------------------------------------------------------
# the baseline
def rna_pc_angle(adata, seed: int = 0, x=None) -> tuple[np.ndarray, str]:
    """The ``rna_pc_angle`` baseline: ``atan2(PC2, PC1)`` of the cells' RNA PCA scores in [0, 2π),
    and where the scores came from (``obsm['X_pca']``, else a seeded PCA of ``X`` over all genes;
    see the module docstring; ``x``: the h5ad file holding ``X`` when ``adata`` was read without it).
    NaN for every cell when no two components can be computed."""
    pcs = np.asarray(adata.obsm["X_pca"], dtype=np.float64) if "X_pca" in adata.obsm else None
    source = "obsm['X_pca']"
    if pcs is None or pcs.ndim != 2 or pcs.shape[1] < 2:
        if x is not None:
            from ..cohort_io import read_cohort

            adata = read_cohort(x)
        pcs, source = _pca_of_x(adata, seed), "PCA of X (all genes, centred, unscaled)"
    if pcs is None:
        return np.full(adata.n_obs, np.nan), "none (fewer than 3 cells or genes)"
    return np.mod(np.arctan2(pcs[:, 1], pcs[:, 0]), TWO_PI), source


def _pca_of_x(adata, seed: int) -> np.ndarray | None:
    """The first two PC scores of ``adata.X`` (scanpy's PCA, ``random_state=seed``), or None."""
    import anndata as ad
    import scanpy as sc

    if min(adata.n_obs, adata.n_vars) < 3:
        return None
    tmp = ad.AnnData(X=adata.X.astype(np.float32), obs=pd.DataFrame(index=np.arange(adata.n_obs).astype(str)))
    sc.pp.pca(tmp, n_comps=2, random_state=seed)
    return np.asarray(tmp.obsm["X_pca"], dtype=np.float64)[:, :2]


# ---------------------------------------------------------------------------------------
# position_agreement.tsv
def _agreement(angle: np.ndarray, reference: np.ndarray) -> float:
    return circular_agreement(angle, reference)["agreement"]


def position_agreement_rows(reference: str, position, baseline, angle, seed: int = 0, n_boot: int = N_BOOT,
                            level: float = 0.95) -> list[dict]:
    """The three rows of ``position_agreement.tsv`` for one reference (see the module docstring):
    ``cosmic`` (``position``), ``rna_pc_angle`` (``baseline``) and their paired difference, each
    scored against ``angle`` (radians) with :func:`circular_agreement` on the cells where all
    three are finite, with percentile-bootstrap intervals over cells (``n_boot`` resamples,
    ``seed``)."""
    a, b, r = (np.asarray(v, dtype=np.float64).ravel() for v in (position, baseline, angle))
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(r)
    a, b, r = a[ok], b[ok], r[ok]
    n = int(len(r))
    boot = np.full((n_boot, 2), np.nan)
    rng = np.random.default_rng(seed)
    for i in range(n_boot if n else 0):
        idx = rng.integers(0, n, n)
        boot[i] = _agreement(a[idx], r[idx]), _agreement(b[idx], r[idx])
    q = [50 * (1 - level), 50 * (1 + level)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN without cells
        ci = np.nanpercentile(boot, q, axis=0) if n else np.full((2, 2), np.nan)
        diff_ci = np.nanpercentile(boot[:, 0] - boot[:, 1], q) if n else np.full(2, np.nan)
    means = (_agreement(a, r), _agreement(b, r))
    common = {"direction": "cell_cycle", "space": "rna", "metric": "position_agreement", "reference": reference,
              "n_cells": n, "n_boot": int(n_boot)}
    rows = [common | {"method": method, "mean": means[j], "ci_low": float(ci[0, j]), "ci_high": float(ci[1, j])}
            for j, method in enumerate(("cosmic", BASELINE))]
    rows.append(common | {"method": "cosmic", "baseline": BASELINE, "diff_mean": means[0] - means[1],
                          "diff_ci_low": float(diff_ci[0]), "diff_ci_high": float(diff_ci[1])})
    return rows


def write_position_agreement(path, rows: list[dict]) -> pd.DataFrame:
    """``position_agreement.tsv`` from :func:`position_agreement_rows` rows (header only without rows)."""
    table = pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return table
