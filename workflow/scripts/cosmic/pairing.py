"""Join each sequenced cell to its own nucleus, and samples into a cohort.

The pairing table of a sample records, per barcode, the image and the pixel position where the
cell sat. A barcode is paired to the nucleus whose mask contains that position; when the position
falls outside every mask, to the nearest nucleus centroid within ``max_distance`` pixels. Barcodes
that cannot be paired unambiguously are dropped and every drop is recorded in the QC table.
"""

from __future__ import annotations

# anndata is imported where it is used: the segment rule's environment (imaging.yaml) reads
# pairing tables through this module and has no anndata.

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tifffile
from scipy.spatial import cKDTree

from .atomic import atomic_path
from .errors import CosmicDataWarning, CosmicInputError
from .nuclei import feature_columns

log = logging.getLogger(__name__)

PAIRING_COLUMNS = ("barcode", "image", "y", "x")
SAMPLE_METADATA = ("condition", "cell_line", "treatment", "response")

# Status of each barcode in the QC table.
PAIRED = "paired"
PAIRED_NEAREST = "paired_nearest"  # position outside every mask, nearest centroid within reach
NO_NUCLEUS = "no_nucleus_within_reach"
AMBIGUOUS = "position_hits_several_nuclei"
CLAIMED_TWICE = "nucleus_claimed_twice"
NOT_SEQUENCED = "barcode_not_in_counts"
FILTERED = "cell_removed_by_rna_qc"
UNKNOWN_IMAGE = "image_not_in_sample"


@dataclass
class PairingParams:
    max_distance: float = 10.0  # px from the recorded position to a nucleus centroid
    ambiguity_ratio: float = 1.5  # second-nearest must be this much farther than the nearest
    embedding: str = "pca"  # obsm["X_<embedding>"] of the RNA object becomes obsm["X_rna"]
    qc_pass_only: bool = False  # pair only nuclei that passed the imaging QC flags
    split_merged_nuclei: bool = True  # segmentation splits nuclei holding several recorded positions

    def __post_init__(self):
        from .config import check_against_schema

        check_against_schema(self, "pairing")

    @classmethod
    def from_config(cls, block: dict | None) -> "PairingParams":
        from .config import params_from_config

        return params_from_config(cls, "pairing", block)


def read_pairing_table(path, sample: str | None = None) -> pd.DataFrame:
    """Read a pairing table (TSV or CSV) and check its columns and barcodes."""
    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype={"barcode": str, "image": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CosmicInputError(f"sample '{sample}': cannot read pairing table '{path}': {exc}") from None
    missing = [c for c in PAIRING_COLUMNS if c not in table.columns]
    if missing:
        raise CosmicInputError(
            f"sample '{sample}': pairing table '{path}' lacks columns {missing}; it needs "
            f"{list(PAIRING_COLUMNS)} (barcode, image name without suffix, pixel row y, pixel column x)."
        )
    for column in ("y", "x"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    bad = table[table[["y", "x"]].isna().any(axis=1) | table["barcode"].isna()]
    if len(bad):
        raise CosmicInputError(
            f"sample '{sample}': pairing table '{path}' has {len(bad)} rows without a barcode or a numeric "
            f"position (first: row {bad.index[0] + 2}). Fill in or remove those rows."
        )
    dup = table["barcode"][table["barcode"].duplicated()].unique()
    if len(dup):
        raise CosmicInputError(
            f"sample '{sample}': pairing table '{path}' lists {len(dup)} barcodes more than once "
            f"(e.g. {list(dup[:3])}). Each barcode must point at one position."
        )
    return table


def assign_nuclei(pairing: pd.DataFrame, nuclei: pd.DataFrame, masks: Mapping[str, np.ndarray],
                  params: PairingParams) -> pd.DataFrame:
    """For every pairing row: the nucleus row it belongs to (or -1) and a status.

    ``nuclei`` is the per-nucleus table (columns image, label, centroid_y, centroid_x) and
    ``masks`` maps image name to its label mask; it is read one image at a time, so a
    :class:`MaskFiles` keeps a single mask in memory however many images the sample has.
    Returns pairing with added columns ``nucleus_row``, ``status`` and ``distance``.
    """
    out = pairing.copy()
    nucleus_row = np.full(len(out), -1, dtype=np.int64)
    status = np.full(len(out), NO_NUCLEUS, dtype=object)
    distance = np.full(len(out), np.nan)
    nuclei = nuclei.reset_index(drop=True)
    nuclei_by_image = nuclei.groupby("image", sort=False).indices
    labels = nuclei["label"].to_numpy()
    centroids = nuclei[["centroid_y", "centroid_x"]].to_numpy(float)
    ys_all = out["y"].to_numpy(float)
    xs_all = out["x"].to_numpy(float)
    for image, at in out.groupby("image", sort=False).indices.items():
        if image not in masks:
            status[at] = UNKNOWN_IMAGE
            continue
        in_image = nuclei_by_image.get(image, np.empty(0, dtype=np.int64))
        nucleus_row[at], status[at], distance[at] = _assign_in_image(
            ys_all[at], xs_all[at], masks[image], labels, centroids, in_image, params)
    out["nucleus_row"] = nucleus_row
    out["status"] = status
    out["distance"] = distance
    # A nucleus claimed by two barcodes cannot be attributed: drop all its claimants.
    claimed = out["nucleus_row"] >= 0
    counts = out.loc[claimed, "nucleus_row"].value_counts()
    twice = out["nucleus_row"].isin(counts.index[counts > 1]) & claimed
    out.loc[twice, "status"] = CLAIMED_TWICE
    out.loc[twice, "nucleus_row"] = -1
    return out


def _assign_in_image(ys: np.ndarray, xs: np.ndarray, mask: np.ndarray, labels: np.ndarray,
                     centroids: np.ndarray, in_image: np.ndarray, params: PairingParams):
    """Nucleus row, status and distance of the positions (ys, xs) of one image: the nucleus
    whose mask holds the position, else the nearest centroid within ``max_distance`` unless
    the second nearest is about as near (ambiguous). ``labels`` and ``centroids`` (y, x) are
    the sample's nuclei, ``in_image`` the rows of this image's."""
    rows = np.full(len(ys), -1, dtype=np.int64)
    status = np.full(len(ys), NO_NUCLEUS, dtype=object)
    distance = np.full(len(ys), np.nan)
    label_to_row = dict(zip(labels[in_image].astype(int), in_image))
    iy = np.clip(np.round(ys).astype(int), 0, mask.shape[0] - 1)
    ix = np.clip(np.round(xs).astype(int), 0, mask.shape[1] - 1)
    inside = (ys >= -0.5) & (ys < mask.shape[0] - 0.5) & (xs >= -0.5) & (xs < mask.shape[1] - 0.5)
    hit = np.where(inside, mask[iy, ix], 0)
    rows[:] = [label_to_row.get(int(label), -1) for label in hit]
    found = rows >= 0
    status[found] = PAIRED
    distance[found] = np.hypot(centroids[rows[found], 0] - ys[found], centroids[rows[found], 1] - xs[found])
    miss = np.flatnonzero(~found)
    if len(in_image) == 0 or len(miss) == 0:
        return rows, status, distance
    k = min(2, len(in_image))
    dists, near = cKDTree(centroids[in_image]).query(
        np.column_stack([ys[miss], xs[miss]]), k=k)
    dists, near = dists.reshape(len(miss), k), near.reshape(len(miss), k)
    within = dists[:, 0] <= params.max_distance
    ambiguous = np.zeros(len(miss), dtype=bool)
    if k > 1:
        ambiguous = within & (dists[:, 1] <= params.max_distance) & (
            dists[:, 1] < params.ambiguity_ratio * dists[:, 0])
    nearest = within & ~ambiguous
    status[miss[ambiguous]] = AMBIGUOUS
    distance[miss[within]] = dists[within, 0]
    status[miss[nearest]] = PAIRED_NEAREST
    rows[miss[nearest]] = in_image[near[nearest, 0]]
    return rows, status, distance


def pair_sample(sample: str, rna: ad.AnnData, nuclei: pd.DataFrame, masks: Mapping[str, np.ndarray],
                pairing: pd.DataFrame, params: PairingParams, metadata: dict | None = None,
                rna_dropped: pd.DataFrame | None = None, embedding: np.ndarray | None = None,
                pairing_path=None) -> tuple[ad.AnnData, pd.DataFrame]:
    """Pair the RNA cells of one sample with their nuclei.

    Returns the paired AnnData (one obs per paired cell, ids ``<sample>:<barcode>``) and a QC table
    with one row per barcode seen in the pairing table or the RNA object and its status.
    """
    where = f"sample '{sample}': pairing table '{pairing_path or '<pairing>'}'"
    rna_barcodes = pd.Index(rna.obs_names)
    filtered = set(rna_dropped["barcode"]) if rna_dropped is not None and len(rna_dropped) else set()
    in_rna = pairing["barcode"].isin(rna_barcodes)
    if not in_rna.any() and not pairing["barcode"].isin(filtered).any():
        raise CosmicInputError(
            f"{where} shares no barcode with the count matrix ({len(pairing)} pairing barcodes, e.g. "
            f"{list(pairing['barcode'][:2])}; {len(rna_barcodes)} expression barcodes, e.g. {list(rna_barcodes[:2])}). "
            "Check that both come from the same run and use the same barcode format (e.g. the '-1' suffix)."
        )
    assigned = assign_nuclei(pairing, nuclei, masks, params)
    assigned.loc[~in_rna.to_numpy(), "status"] = np.where(
        assigned.loc[~in_rna.to_numpy(), "barcode"].isin(filtered), FILTERED, NOT_SEQUENCED)
    assigned.loc[~in_rna.to_numpy(), "nucleus_row"] = -1
    nuclei = nuclei.reset_index(drop=True)
    if params.qc_pass_only and "qc_pass" in nuclei.columns:
        failed = (assigned["nucleus_row"] >= 0) & ~nuclei["qc_pass"].reindex(assigned["nucleus_row"]).fillna(False).to_numpy()
        assigned.loc[failed, "status"] = "nucleus_failed_imaging_qc"
        assigned.loc[failed, "nucleus_row"] = -1

    unpaired_rna = rna_barcodes.difference(pairing["barcode"])
    qc = pd.concat([
        assigned.assign(sample=sample),
        pd.DataFrame({"sample": sample, "barcode": unpaired_rna, "status": "barcode_not_in_pairing_table",
                      "nucleus_row": -1}),
    ], ignore_index=True)
    qc["nucleus_id"] = qc["nucleus_row"].map(lambda r: nuclei.at[r, "nucleus_id"] if r >= 0 else None)
    qc = qc[["sample", "barcode", "status", "nucleus_id", "distance", "image", "y", "x"]]

    ok = assigned[assigned["nucleus_row"] >= 0]
    n_paired, n_rna = len(ok), rna.n_obs
    if n_paired == 0:
        raise CosmicInputError(
            f"{where}: no barcode could be paired to a nucleus ({qc['status'].value_counts().to_dict()}). "
            "Check that the positions are pixel coordinates (y = row, x = column) of the segmented images, "
            "or raise pairing.max_distance."
        )
    if n_paired < n_rna or n_paired < len(pairing):
        warnings.warn(
            f"sample '{sample}': paired {n_paired} cells of {n_rna} expression barcodes and {len(pairing)} "
            f"pairing rows; dropped: {qc.loc[~qc['status'].isin([PAIRED, PAIRED_NEAREST]), 'status'].value_counts().to_dict()}",
            CosmicDataWarning,
            stacklevel=2,
        )

    rows = ok["nucleus_row"].to_numpy()
    morph_cols = feature_columns(nuclei)
    obs = pd.DataFrame({
        "sample": sample,
        "barcode": ok["barcode"].to_numpy(),
        "nucleus_id": nuclei.loc[rows, "nucleus_id"].to_numpy(),
        "image": nuclei.loc[rows, "image"].to_numpy(),
        "label": nuclei.loc[rows, "label"].to_numpy(),
        "crop_index": rows,
        "pairing_distance": ok["distance"].to_numpy(),
        "pairing_status": ok["status"].to_numpy(),
    }, index=pd.Index([f"{sample}:{b}" for b in ok["barcode"]], name="cell_id"))
    paired = assemble_paired(sample, rna, ok["barcode"].to_numpy(), obs, metadata,
                             nuclei.loc[rows, morph_cols].to_numpy(np.float32), morph_cols, params.embedding)
    if embedding is not None:
        paired.obsm["X_fm"] = np.asarray(embedding[rows], dtype=np.float32)
    paired.uns["pairing"] = {"sample": sample, "n_paired": int(n_paired), "n_rna_cells": int(n_rna),
                             "n_pairing_rows": int(len(pairing)), "n_nuclei": int(len(nuclei))}
    return paired, qc


def read_annotations(path, sample=None) -> pd.DataFrame:
    """Per-cell labels keyed by barcode (.csv/.tsv/.parquet): index = barcode, columns = labels."""
    path = Path(path)
    where = f"sample '{sample}': annotation table '{path}'"
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, sep="," if name.endswith((".csv", ".csv.gz")) else "\t")
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise CosmicInputError(f"{where} could not be read ({type(exc).__name__}: {exc}).") from exc
    if "barcode" not in table.columns:
        raise CosmicInputError(f"{where} has no 'barcode' column (columns: {list(table.columns)}). "
                               "Name the barcode column 'barcode'.")
    table["barcode"] = table["barcode"].astype(str)
    dup = table["barcode"][table["barcode"].duplicated()].unique()
    if len(dup):
        raise CosmicInputError(f"{where}: barcode(s) {list(dup[:5])} occur more than once; keep one row per cell.")
    reserved = {"sample", "barcode", "nucleus_id", "crop_index", "image", "label"} & set(table.columns) - {"barcode"}
    if reserved:
        raise CosmicInputError(f"{where}: column(s) {sorted(reserved)} are set by the workflow; rename them.")
    return table.set_index("barcode")


def apply_annotations(paired: ad.AnnData, annotations: pd.DataFrame, sample=None, path=None) -> ad.AnnData:
    """Add per-cell label columns to ``obs`` (overriding sample-level values of the same name).

    Paired cells absent from the table get missing values; a table sharing no barcode is an error.
    """
    barcodes = paired.obs["barcode"].astype(str)
    hit = barcodes.isin(annotations.index)
    if not hit.any():
        raise CosmicInputError(
            f"sample '{sample}': annotation table '{path}' shares no barcode with the paired cells "
            f"(e.g. {list(annotations.index[:2])} vs {list(barcodes[:2])}). Use the count matrix's barcodes.")
    if not hit.all():
        warnings.warn(f"sample '{sample}': {int((~hit).sum())} paired cell(s) have no row in '{path}'; "
                      "their labels are missing", CosmicDataWarning, stacklevel=2)
    for column in annotations.columns:
        paired.obs[column] = annotations[column].reindex(barcodes).to_numpy()
    return paired


def assemble_paired(sample: str, rna: ad.AnnData, barcodes, obs: pd.DataFrame, metadata: dict | None,
                    morphology: np.ndarray, morph_names: list[str], embedding: str) -> ad.AnnData:
    """The paired AnnData of one sample: RNA cells ``barcodes`` with the pairing ``obs`` (sample
    metadata and the RNA object's own obs columns added), ``obsm["X_morph"]`` and the RNA
    embedding ``obsm["X_<embedding>"]`` as ``obsm["X_rna"]``. Shared by image and table samples."""
    paired = rna[np.asarray(barcodes)].copy()
    obs = obs.copy()
    for key, value in (metadata or {}).items():
        if key in SAMPLE_METADATA or key.startswith("meta_"):
            obs[key] = value
    for column in paired.obs.columns:
        if column not in obs.columns:
            obs[column] = paired.obs[column].to_numpy()
    paired.obs = obs
    paired.obsm["X_morph"] = np.asarray(morphology, dtype=np.float32)
    paired.uns["morph_features"] = list(morph_names)
    key = f"X_{embedding}"
    if key not in paired.obsm:
        raise CosmicInputError(
            f"sample '{sample}': the RNA object has no obsm['{key}'] (pairing.embedding = '{embedding}'); "
            f"available: {sorted(paired.obsm)}. Set pairing.embedding to one of them."
        )
    paired.obsm["X_rna"] = np.asarray(paired.obsm[key], dtype=np.float32)
    paired.uns["rna_embedding"] = embedding
    return paired


def summarise_qc(qc: pd.DataFrame) -> pd.DataFrame:
    """Counts per sample and status (wide), plus the paired fraction of expression barcodes."""
    wide = qc.pivot_table(index="sample", columns="status", values="barcode", aggfunc="count", fill_value=0)
    paired = wide.reindex(columns=[PAIRED, PAIRED_NEAREST], fill_value=0).sum(axis=1)
    sequenced = qc[~qc["status"].isin([NOT_SEQUENCED, FILTERED])].groupby("sample").size()
    wide["paired_total"] = paired
    wide["paired_fraction_of_cells"] = paired / sequenced.reindex(wide.index)
    return wide.reset_index()


RNA_ROW = "_rna_row"  # obs column carried through pairing: each paired cell's row in the RNA file


def read_rna_annotations(path, sample: str) -> ad.AnnData:
    """The sample's RNA object without its expression (obs, var, obsm, uns; an all-zero sparse ``X``),
    each cell's row in the file in ``obs[RNA_ROW]``: pairing reads barcodes and embeddings only, and
    :func:`write_paired` copies the expression of the paired cells from the file a chunk at a time."""
    from .cohort_io import read_cohort

    rna = read_cohort(path, x=False, what=f"the RNA object of sample '{sample}'")
    rna.obs[RNA_ROW] = np.arange(rna.n_obs)
    return rna


def write_paired(paired: ad.AnnData, path, rna_path) -> None:
    """Write the paired AnnData of :func:`read_rna_annotations` cells with their ``X`` and
    ``layers["counts"]`` streamed from ``rna_path`` (memory: one chunk of cells, not the sample)."""
    from .cohort_io import write_streamed

    rows = paired.obs.pop(RNA_ROW).to_numpy().astype(np.int64)
    write_streamed(paired, path, [(rna_path, rows)])


def build_cohort(paired: list[ad.AnnData], n_pcs: int = 30, seed: int = 0, n_top_genes: int = 2000) -> ad.AnnData:
    """Concatenate paired samples; recompute the PCA jointly (per-sample PCAs are not comparable)."""
    import anndata as ad

    cohort = ad.concat(paired, join="inner", merge="same", uns_merge="same", index_unique=None)
    return _joint_embedding(_checked_cohort(cohort, paired[0]), n_pcs, seed, paired[0].uns.get("rna_embedding"),
                            n_top_genes)


def _checked_cohort(cohort: ad.AnnData, first: ad.AnnData) -> ad.AnnData:
    if not cohort.obs_names.is_unique:
        raise CosmicInputError("cell ids are not unique across samples: sample ids must be unique in the sample sheet")
    for column in cohort.obs.columns:
        if cohort.obs[column].dtype == object:
            cohort.obs[column] = cohort.obs[column].astype(str).astype("category")
    cohort.uns["morph_features"] = list(first.uns["morph_features"])
    return cohort


def _joint_embedding(cohort: ad.AnnData, n_pcs: int, seed: int, embedding: str | None,
                     n_top_genes: int = 2000) -> ad.AnnData:
    """The ``n_top_genes`` highly variable genes (per sample) and the PCA of the whole cohort on them (scanpy); the PCA is
    also ``obsm["X_rna"]`` when the samples' RNA embedding (``embedding``) is ``pca``."""
    import scanpy as sc

    hvg_key = "highly_variable"
    batch = "sample" if cohort.obs["sample"].nunique() > 1 else None
    sc.pp.highly_variable_genes(cohort, n_top_genes=min(int(n_top_genes), cohort.n_vars), batch_key=batch)
    n_comps = max(1, min(n_pcs, cohort.n_obs - 1, int(cohort.var[hvg_key].sum()) - 1))
    sc.pp.pca(cohort, n_comps=n_comps, mask_var=hvg_key, random_state=seed)
    if embedding == "pca":
        cohort.obsm["X_rna"] = cohort.obsm["X_pca"].astype(np.float32)
    return cohort


def embedding_fit_rows(sample, max_cells: int, seed: int = 0) -> np.ndarray:
    """Ascending rows the cohort's highly variable genes and PCA are fitted on: every row when there are
    at most ``max_cells`` (0: no limit), else a seeded subset of about ``max_cells`` with each sample's
    share of the cohort (at least 50 cells of a sample, or all of it), so no sample is left out."""
    from .splits import subset_indices

    sample = np.asarray(sample).astype(str)
    n = len(sample)
    if max_cells <= 0 or n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    rows = []
    for name in pd.unique(sample):
        members = np.flatnonzero(sample == name)
        share = max(min(50, len(members)), int(round(max_cells * len(members) / n)))
        rows.append(members[subset_indices(len(members), share, rng)])
    return np.sort(np.concatenate(rows))


def _file_rows(paths, n_rows: list[int], rows: np.ndarray):
    """``(path, rows of that file)`` for ascending cohort ``rows`` over files stacked in turn."""
    offsets = np.concatenate([[0], np.cumsum(n_rows)])
    for path, start, stop in zip(paths, offsets[:-1], offsets[1:]):
        yield path, rows[(rows >= start) & (rows < stop)] - start


def build_cohort_from_files(paths: list, out_path, n_pcs: int = 30, seed: int = 0, max_fit_cells: int = 20000,
                            n_top_genes: int = 2000, progress: bool = True) -> ad.AnnData:
    """:func:`build_cohort` of the paired h5ad files at ``paths``, written to ``out_path`` without holding
    the cohort's expression: the highly variable genes and PCA are fitted (scanpy) on at most
    ``max_fit_cells`` cells (:func:`embedding_fit_rows`; 0: every cell; ``uns["pca"]["fit_cells"]`` says
    how many), every cell is projected on the components a chunk at a time, and ``X`` and
    ``layers["counts"]`` are copied from the files a chunk of cells at a time. Returns the cohort's
    annotations (its ``X`` is empty)."""
    import anndata as ad
    import h5py
    from tqdm.auto import tqdm

    from .cohort_io import DiskRows, _columns_of, read_cohort, write_streamed

    shells = [read_cohort(p, x=False, what="a paired sample") for p in paths]
    n_rows = [s.n_obs for s in shells]
    cohort = _checked_cohort(ad.concat(shells, join="inner", merge="same", uns_merge="same", index_unique=None),
                             shells[0])
    embedding = shells[0].uns.get("rna_embedding")
    del shells
    genes = cohort.var_names
    fit_rows = embedding_fit_rows(cohort.obs["sample"], max_fit_cells, seed)
    if len(fit_rows) < cohort.n_obs:
        log.warning("cohort: highly variable genes and PCA fitted on a seeded subset of %d of %d cells "
                    "(rna.max_fit_cells); every cell is projected on its components", len(fit_rows), cohort.n_obs)
    blocks = []
    for path, rows in _file_rows(paths, n_rows, fit_rows):
        with h5py.File(path, "r") as handle:
            blocks += list(DiskRows(handle["X"]).blocks(rows, _columns_of(handle, genes, path)))
    fit = ad.AnnData(X=sp.csr_matrix(sp.vstack(blocks, format="csr"), dtype=np.float32),
                     obs=cohort.obs.iloc[fit_rows].copy(), var=pd.DataFrame(index=genes))
    del blocks
    fit = _joint_embedding(fit, n_pcs, seed, embedding=None, n_top_genes=n_top_genes)
    hvg = np.flatnonzero(fit.var["highly_variable"].to_numpy(bool))
    components = np.asarray(fit.varm["PCs"], dtype=np.float64)[hvg]
    shift = np.asarray(fit.X[:, hvg].mean(0), dtype=np.float64).ravel() @ components  # scanpy centres on the fit cells
    for column in fit.var.columns:
        cohort.var[column] = fit.var[column].to_numpy()
    cohort.varm["PCs"] = fit.varm["PCs"]
    cohort.uns["hvg"], cohort.uns["pca"] = fit.uns["hvg"], dict(fit.uns["pca"], fit_cells=len(fit_rows))
    del fit
    scores = []
    for path in tqdm(paths, desc="cohort: PCA projection", disable=not progress, leave=False):
        with h5py.File(path, "r") as handle:
            columns = _columns_of(handle, genes, path)
            file_hvg = hvg if columns is None else columns[hvg]
            scores += [np.asarray(b @ components) - shift for b in DiskRows(handle["X"]).blocks(columns=file_hvg)]
    cohort.obsm["X_pca"] = np.vstack(scores).astype(np.float32)
    if embedding == "pca":
        cohort.obsm["X_rna"] = cohort.obsm["X_pca"].copy()
    write_streamed(cohort, out_path, [(p, None) for p in paths], elements=("X", "layers/counts"))
    return cohort


class MaskFiles(Mapping):
    """Image name -> label mask, read from its file each time it is looked up (nothing kept):
    pairing a sample holds one mask in memory, not all of them."""

    def __init__(self, mask_paths: Mapping[str, str]):
        self.paths = dict(mask_paths)

    def __getitem__(self, name: str) -> np.ndarray:
        return tifffile.imread(self.paths[name])

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, name) -> bool:
        return name in self.paths


def read_masks(mask_paths: Mapping[str, str]) -> MaskFiles:
    """The masks of a sample, each read when it is used (see :class:`MaskFiles`)."""
    return MaskFiles(mask_paths)


def write_table(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
