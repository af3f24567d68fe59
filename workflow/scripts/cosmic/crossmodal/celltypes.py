"""Cell types: RNA-derived labels fitted on training cells, read back from observed and generated
morphology by classifiers fitted on training cells, and the confusion tables of that transfer."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import metrics as M
from ..errors import CosmicInputError
from .representation import FM, MORPH, Representation

log = logging.getLogger(__name__)

CONFUSION_SOURCES = {"observed_morphology": "observed morphology (COSMIC's representation)",
                     "observed_foundation": "observed foundation embedding",
                     "observed_region_properties": "observed region properties",
                     "generated_cosmic": "generated (COSMIC mean)",
                     "generated_cosmic_sample": "generated (COSMIC sample)"}
# the name of each observed representation when it is read beside COSMIC's own (see cell_type_transfer)
_OBSERVED_SOURCE = {FM: "observed_foundation", MORPH: "observed_region_properties"}


def _umap_connectivities(x: np.ndarray, n_neighbors: int = 15) -> sp.csr_matrix:
    """Fuzzy k-NN graph of ``x`` as built by ``scanpy.pp.neighbors`` (UMAP connectivities, exact
    Euclidean neighbours, the cell itself counted among its ``n_neighbors``), in numpy: the same graph
    without numba's compile time."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = max(2, min(int(n_neighbors), n))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    d, idx = dist[:, 1:], idx[:, 1:]  # the first neighbour is the cell itself
    pos = np.where(d > 0, d, np.inf).min(1)
    rho = np.where(np.isfinite(pos), pos, 0.0)
    target = np.log2(k)
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    for _ in range(64):  # binary search of each cell's bandwidth (umap's smooth_knn_dist)
        psum = np.where(d - rho[:, None] > 0, np.exp(-(d - rho[:, None]) / mid[:, None]), 1.0).sum(1)
        done = np.abs(psum - target) < 1e-5
        gt = psum > target
        hi = np.where(gt & ~done, mid, hi)
        lo = np.where(~gt & ~done, mid, lo)
        mid = np.where(done, mid, np.where(np.isinf(hi), mid * 2, (lo + hi) / 2))
    sigma = np.maximum(mid, 1e-3 * np.where(rho > 0, d.mean(1), d.mean()))
    val = np.where(d - rho[:, None] <= 0, 1.0, np.exp(-(d - rho[:, None]) / sigma[:, None]))
    w = sp.csr_matrix((val.ravel(), (np.repeat(np.arange(n), k - 1), idx.ravel())), shape=(n, n))
    return (w + w.T - w.multiply(w.T)).tocsr()


def cluster_labels(rna_train, rna_test, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """RNA-derived cell-type labels, fitted on training cells only.

    Leiden clustering (scanpy, ``flavor="igraph"``, ``n_iterations=2``, undirected, resolution 1,
    seeded) of the 15-nearest-neighbour UMAP-connectivity graph of the training cells' PCA scores;
    k-means with ``n_clusters`` when scanpy/igraph are missing or Leiden finds a single cluster.
    Test cells take the majority label of their 15 nearest training cells in the same space.
    """
    from sklearn.neighbors import KNeighborsClassifier

    rna_train, rna_test = np.asarray(rna_train, np.float64), np.asarray(rna_test, np.float64)
    train, method = None, "kmeans"
    try:
        import anndata as ad
        import scanpy as sc

        a = ad.AnnData(np.zeros((len(rna_train), 1), np.float32))
        sc.tl.leiden(a, adjacency=_umap_connectivities(rna_train, 15), flavor="igraph", n_iterations=2,
                     directed=False, random_state=seed, resolution=1.0)
        train = a.obs["leiden"].astype(str).to_numpy()
        method = "leiden"
        if len(np.unique(train)) < 2:
            train, method = None, "kmeans"
    except Exception as err:  # noqa: BLE001 - any failure of the optional clustering stack
        log.warning("cosmic: Leiden clustering unavailable (%s); using k-means", err)
    if train is None:
        from sklearn.cluster import KMeans

        k = max(2, min(int(n_clusters), len(rna_train)))
        train = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rna_train).astype(str)
    test = KNeighborsClassifier(min(15, len(rna_train))).fit(rna_train, train).predict(rna_test)
    return train, test, method


def transfer(rep_train, y_train, y_test, generated: dict[str, np.ndarray], rep_test_obs,
              return_predictions: bool = False):
    """Classifier on observed training representations, applied to observed and generated test
    representations (accuracy against the test labels)."""
    acc, preds = M.classifier_transfer(rep_train, y_train, {"observed_morphology": rep_test_obs,
                                                            **{f"generated_{k}": g for k, g in generated.items()}},
                                       y_test, standardise=False, C=1.0, max_iter=2000)
    return (acc, preds) if return_predictions else acc


def label_order(labels) -> list[str]:
    """Labels sorted numerically when they are cluster numbers, else alphabetically."""
    labels = sorted({str(x) for x in labels})
    return sorted(labels, key=int) if all(x.isdigit() for x in labels) else labels


def confusion_table(true, predicted: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table: source x true RNA label x predicted label -> number and fraction of test cells."""
    labels = label_order(np.concatenate([np.asarray(true).astype(str)]
                                         + [np.asarray(p).astype(str) for p in predicted.values()]))
    rows = []
    for source, pred in predicted.items():
        c = M.confusion_counts(true, pred, labels)
        long = c.stack().rename("n_cells").reset_index()
        row = long.groupby("true", sort=False)["n_cells"].transform("sum")
        long["fraction_of_true"] = long["n_cells"] / row.where(row > 0)
        rows.append(long.rename(columns={"true": "true_label", "predicted": "predicted_label"})
                    .assign(source=source))
    out = pd.concat(rows, ignore_index=True)
    return out[["source", "true_label", "predicted_label", "n_cells", "fraction_of_true"]]


def rna_labels(train_cells, test_cells, train_rna, test_rna, params) -> tuple[np.ndarray, np.ndarray, str]:
    """Cell-type labels of training and test cells and how they were made: the obs column
    ``params.label_key``, else Leiden clusters of the training cells' RNA PCA scores (``train_rna``,
    ``test_rna``: scores in PCA units) transferred to test cells."""
    if params.label_key is None:
        return cluster_labels(train_rna, test_rna, params.n_clusters, params.seed)
    if params.label_key not in train_cells.obs:
        raise CosmicInputError(f"cosmic.label_key '{params.label_key}' is not an obs column of the cohort")
    return (train_cells.obs[params.label_key].astype(str).to_numpy(),
            test_cells.obs[params.label_key].astype(str).to_numpy(), f"obs:{params.label_key}")


def cell_type_transfer(labels, train_rep, test_rep, generated_rep: dict, rep_sample, other: Representation,
                       train_cells, test_cells) -> tuple[dict, pd.DataFrame]:
    """How well cell types are read from observed and generated morphology (test cells).

    ``labels``: (training labels, test labels, method) of :func:`rna_labels`; ``train_rep``,
    ``test_rep``: observed standardised representation; ``generated_rep``: method -> representation
    predicted from RNA; ``rep_sample``: one COSMIC sample. The other observed representation
    (``other``: foundation embedding or region properties), when the cohort has it, is
    read against the same RNA types with its own classifier fitted on training cells. Returns the
    accuracies (``cell_type_transfer`` of metrics.json) and the confusion table.
    """
    lab_tr, lab_te, method = labels
    acc, predicted = transfer(train_rep, lab_tr, lab_te, {**generated_rep, "cosmic_sample": rep_sample}, test_rep,
                              return_predictions=True)
    result = dict(labels=method, **acc)
    other_source, other_key = _OBSERVED_SOURCE[other], other.obsm_key
    sources = ["observed_morphology", "generated_cosmic", "generated_cosmic_sample"]
    if other_key in train_cells.obsm:
        acc_o, pred_o = M.classifier_transfer(np.asarray(train_cells.obsm[other_key], dtype=np.float32), lab_tr,
                                              {other_source: np.asarray(test_cells.obsm[other_key],
                                                                        dtype=np.float32)},
                                              lab_te, standardise=True, C=1.0, max_iter=2000)
        result[other_source] = acc_o[other_source]
        predicted[other_source] = pred_o[other_source]
        sources.insert(1, other_source)
    return result, confusion_table(lab_te, {k: predicted[k] for k in sources})
