"""RNA stage: read raw counts, validate them, QC-filter, normalise, and embed the cells.

Readers are scanpy's (``read_10x_h5``, ``read_10x_mtx``, ``read_mtx``) and anndata's
(``read_h5ad``); processing is scanpy's (``calculate_qc_metrics``, ``filter_genes``,
``normalize_total``, ``log1p``, ``highly_variable_genes``, ``pca``). This module adds what
they do not: format and orientation detection, validation of user input with messages that
name the file, the sample and the fix, a per-cell report of what QC dropped and why, and the
plug-in of external transcriptomic embeddings (scGPT, Geneformer, UCE, scVI, ...) keyed by
barcode.

Output contract (``rna/{sample}.h5ad``): ``layers["counts"]`` raw counts, ``X`` log-normalised,
QC metrics in ``obs`` (``total_counts``, ``n_genes_by_counts``, ``pct_counts_mt``,
``mito_fraction``), ``var["highly_variable"]`` (all genes kept), ``obsm["X_pca"]`` and optional
``obsm["X_<name>"]``.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from .atomic import atomic_path
from .errors import CosmicInputError, describe
from .plotting import save_figure

FORMATS = ("10x_h5", "10x_mtx", "h5ad", "csv", "tsv")
ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")
HVG_FLAVORS = ("seurat", "cell_ranger", "seurat_v3")
MITO_PREFIXES = ("MT-", "mt-")

_CELL_CYCLE_DIR = Path(__file__).resolve().parents[3] / "resources" / "cell_cycle"
# A few ubiquitous genes, in addition to the shipped Tirosh lists, as evidence that labels are genes.
_COMMON_GENES = frozenset(
    "ACTB GAPDH B2M MALAT1 EEF1A1 TPT1 RPLP0 RPL13A RPS18 FTL FTH1 TMSB4X UBC HSP90AB1 PPIA "
    "VIM MKI67 TOP2A NEAT1 XIST".split()
)
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_BARCODE_RE = re.compile(r"[ACGT]{8,}")
_UNNAMED_RE = re.compile(r"^Unnamed: \d+$")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _strip_compression(name: str) -> str:
    for ext in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def infer_format(path) -> str:
    """Guess the counts format from the path: a folder is a 10x mtx folder, else by extension."""
    path = Path(path)
    if path.is_dir():
        return "10x_mtx"
    name = _strip_compression(path.name.lower())
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    if name.endswith(".mtx"):
        return "10x_mtx"  # the matrix file of a 10x folder: read the folder
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".txt")):
        return "tsv"
    raise CosmicInputError(
        f"{describe(path)}: cannot tell the counts format from the name. Supported: a 10x "
        "Cell Ranger '.h5', a 10x matrix folder (matrix.mtx[.gz], barcodes.tsv[.gz], "
        "features.tsv[.gz] or genes.tsv), '.h5ad', '.csv' or '.tsv'. Rename the file or set the "
        f"sample sheet column 'counts_format' to one of {list(FORMATS)}."
    )


def read_counts(path, sample=None, fmt: str = "auto", orientation: str = "auto") -> anndata.AnnData:
    """Read a raw count matrix as cells x genes, validated.

    ``fmt`` is one of ``"auto"`` or :data:`FORMATS`; ``orientation`` (csv/tsv only) one of
    :data:`ORIENTATIONS`. Returns an AnnData with float32 CSR ``X`` of raw counts, ``obs_names``
    the barcodes and ``var_names`` unique gene symbols (gene IDs in ``var["gene_ids"]`` when the
    file has them). Raises :class:`CosmicInputError` for anything unusable.
    """
    path = Path(path)
    if not path.exists():
        raise CosmicInputError(
            f"{describe(path, sample)}: counts file not found. Fix the 'counts' column of the "
            "sample sheet."
        )
    if fmt in (None, "", "auto"):
        fmt = infer_format(path)
    if fmt not in FORMATS:
        raise CosmicInputError(
            f"{describe(path, sample)}: unknown counts format {fmt!r}; set the sample sheet column "
            f"'counts_format' to 'auto' or one of {list(FORMATS)}."
        )
    if orientation in (None, ""):
        orientation = "auto"
    if orientation not in ORIENTATIONS:
        raise CosmicInputError(
            f"{describe(path, sample)}: unknown counts orientation {orientation!r}; set the sample "
            f"sheet column 'counts_orientation' to one of {list(ORIENTATIONS)}."
        )

    with warnings.catch_warnings():
        # We check and fix name uniqueness ourselves, with a message naming the file.
        warnings.filterwarnings("ignore", message=".*names are not unique.*")
        try:
            if fmt == "10x_h5":
                adata = sc.read_10x_h5(path)
            elif fmt == "10x_mtx":
                adata = _read_mtx_folder(path.parent if path.is_file() else path, sample)
            elif fmt == "h5ad":
                adata = _read_h5ad_counts(path, sample)
            else:
                adata = _read_table(path, sample, sep="," if fmt == "csv" else "\t",
                                    orientation=orientation)
        except CosmicInputError:
            raise
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise CosmicInputError(
                f"{describe(path, sample)}: could not be read as {fmt} counts ({type(err).__name__}: "
                f"{err}). Check that the file is complete and of the declared format (sample "
                "sheet column 'counts_format')."
            ) from err
    return _validate_counts(adata, path, sample)


def _find(folder: Path, *names: str) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_mtx_folder(folder: Path, sample) -> anndata.AnnData:
    matrix = _find(folder, "matrix.mtx.gz", "matrix.mtx")
    barcodes = _find(folder, "barcodes.tsv.gz", "barcodes.tsv")
    features = _find(folder, "features.tsv.gz", "features.tsv", "genes.tsv", "genes.tsv.gz")
    missing = [n for n, f in (("matrix.mtx[.gz]", matrix), ("barcodes.tsv[.gz]", barcodes),
                              ("features.tsv[.gz] or genes.tsv", features)) if f is None]
    if missing:
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise CosmicInputError(
            f"{describe(folder, sample)}: 10x matrix folder lacks {', '.join(missing)} "
            f"(found: {present}). Point the sample sheet 'counts' column at a Cell Ranger "
            "matrix folder (e.g. filtered_feature_bc_matrix/) or its .h5 file."
        )
    names = {matrix.name, barcodes.name, features.name}
    if names in ({"matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz"},
                 {"matrix.mtx", "barcodes.tsv", "genes.tsv"}):
        # The two layouts scanpy reads directly (Cell Ranger v3+ and v2).
        return sc.read_10x_mtx(folder, make_unique=False)
    # Mixed or uncompressed v3 layouts: scanpy's mtx reader plus the two tsv files.
    adata = sc.read_mtx(matrix).T
    feats = pd.read_csv(features, sep="\t", header=None, dtype=str, keep_default_na=False)
    bcs = pd.read_csv(barcodes, sep="\t", header=None, dtype=str, keep_default_na=False)
    if len(feats) != adata.n_vars or len(bcs) != adata.n_obs:
        raise CosmicInputError(
            f"{describe(folder, sample)}: {matrix.name} is {adata.n_vars} genes x {adata.n_obs} "
            f"cells but {features.name} lists {len(feats)} and {barcodes.name} {len(bcs)}. The "
            "three files must come from the same Cell Ranger run."
        )
    name_col = 1 if feats.shape[1] > 1 else 0
    adata.var_names = pd.Index(feats[name_col].to_numpy(), dtype=object)
    adata.var["gene_ids"] = feats[0].to_numpy()
    adata.obs_names = pd.Index(bcs[0].to_numpy(), dtype=object)
    if feats.shape[1] > 2:
        adata.var["feature_types"] = feats[2].to_numpy()
        adata = adata[:, adata.var["feature_types"].to_numpy() == "Gene Expression"].copy()
    return adata


def _read_h5ad_counts(path: Path, sample) -> anndata.AnnData:
    src = anndata.read_h5ad(path)
    if "counts" in src.layers:
        X = src.layers["counts"]
    elif src.X is not None:
        X = src.X
    else:
        raise CosmicInputError(
            f"{describe(path, sample)}: the h5ad has neither layers['counts'] nor X. Store the raw "
            "counts in layers['counts'] or X."
        )
    adata = anndata.AnnData(X=X, obs=src.obs.copy(), var=src.var.copy())
    adata.uns["counts_source"] = "layers['counts']" if "counts" in src.layers else "X"
    return adata


def _load_gene_vocabulary() -> frozenset[str]:
    genes = set(_COMMON_GENES)
    for txt in sorted(_CELL_CYCLE_DIR.glob("*.txt")):
        genes.update(line.strip().upper() for line in txt.read_text().splitlines() if line.strip())
    return frozenset(genes)


def _gene_like_fraction(labels, vocabulary) -> float:
    labels = pd.Index(labels).astype(str)
    if len(labels) == 0:
        return 0.0
    upper = labels.str.upper()
    hits = upper.isin(vocabulary) | upper.str.startswith("MT-") | labels.str.match(_ENSEMBL_RE.pattern)
    return float(np.mean(hits))


def _barcode_like_fraction(labels) -> float:
    labels = pd.Index(labels).astype(str)
    if len(labels) == 0:
        return 0.0
    return float(np.mean(labels.str.contains(_BARCODE_RE.pattern)))


def detect_orientation(row_labels, col_labels) -> str | None:
    """``"cells_x_genes"`` / ``"genes_x_cells"`` from which axis looks like genes or barcodes.

    Genes: overlap with the shipped Tirosh cell-cycle lists and a few ubiquitous genes,
    ``MT-`` names, Ensembl IDs. Barcodes: runs of at least 8 ``ACGT`` letters. Returns ``None``
    when the evidence is absent or contradictory.
    """
    vocab = _load_gene_vocabulary()
    g_row, g_col = _gene_like_fraction(row_labels, vocab), _gene_like_fraction(col_labels, vocab)
    b_row, b_col = _barcode_like_fraction(row_labels), _barcode_like_fraction(col_labels)
    votes = set()
    if g_col > 2 * g_row and g_col > 0:
        votes.add("cells_x_genes")
    elif g_row > 2 * g_col and g_row > 0:
        votes.add("genes_x_cells")
    if b_row >= 0.5 > b_col:
        votes.add("cells_x_genes")
    elif b_col >= 0.5 > b_row:
        votes.add("genes_x_cells")
    return votes.pop() if len(votes) == 1 else None


def _read_table(path: Path, sample, sep: str, orientation: str) -> anndata.AnnData:
    # pandas' C parser rather than anndata.read_csv: anndata's is a pure-Python line parser that
    # cannot report which column is non-numeric.
    df = pd.read_csv(path, sep=sep, index_col=0)
    # pandas renames repeated column labels ('X' -> 'X.1'); restore them from the raw header so
    # duplicate barcodes / genes are reported, not silently renamed.
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    if header.shape[1] == df.shape[1] + 1:
        df.columns = pd.Index(header.iloc[0, 1:].to_numpy(), dtype=object)
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise CosmicInputError(
            f"{describe(path, sample)}: the counts table is empty ({df.shape[0]} rows x "
            f"{df.shape[1]} columns). Expected barcodes on one axis, genes on the other, with "
            "labels in the first row and first column."
        )
    if orientation == "auto":
        orientation = detect_orientation(df.index, df.columns)
        if orientation is None:
            raise CosmicInputError(
                f"{describe(path, sample)}: cannot tell whether rows are cells or genes (row "
                f"labels start {list(map(str, df.index[:3]))}, column labels start "
                f"{list(map(str, df.columns[:3]))}). Set the sample sheet column "
                "'counts_orientation' to 'cells_x_genes' (one row per cell) or 'genes_x_cells' "
                "(one row per gene)."
            )
    non_numeric = [c for c, t in zip(df.columns, df.dtypes) if not pd.api.types.is_numeric_dtype(t)]
    if non_numeric:
        raise CosmicInputError(
            f"{describe(path, sample)}: column(s) {non_numeric[:5]} hold non-numeric values. A "
            "counts table has labels in the first row and first column and numbers elsewhere; "
            "remove annotation columns."
        )
    values = df.to_numpy(dtype=np.float64)
    if orientation == "cells_x_genes":
        barcodes, genes = df.index, df.columns
    else:
        barcodes, genes, values = df.columns, df.index, values.T
    def unnamed_to_none(labels):
        return pd.Index([None if isinstance(x, str) and (x == "" or _UNNAMED_RE.match(x)) else x
                         for x in labels], dtype=object)

    genes, barcodes = unnamed_to_none(genes), unnamed_to_none(barcodes)
    adata = anndata.AnnData(X=values)  # validated (NaN, negatives) before conversion to sparse
    adata.obs_names = barcodes
    adata.var_names = genes
    adata.uns["counts_orientation"] = orientation
    return adata


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X)


def _bad_name(name) -> bool:
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return True
    text = str(name).strip()
    return text == "" or text.lower() in ("nan", "none")


def _validate_counts(adata: anndata.AnnData, path, sample) -> anndata.AnnData:
    where = describe(path, sample)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CosmicInputError(
            f"{where}: the count matrix is empty ({adata.n_obs} cells x {adata.n_vars} genes). "
            "Point the sample sheet 'counts' column at the filtered matrix of a run with cells "
            "(and, for 10x files, Gene Expression features)."
        )
    vals = _values(adata.X)
    if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(vals.dtype, np.complexfloating):
        raise CosmicInputError(f"{where}: counts have dtype {vals.dtype}; expected numbers.")
    if np.issubdtype(vals.dtype, np.floating):
        n_nan = int(np.isnan(vals).sum())
        if n_nan:
            raise CosmicInputError(
                f"{where}: {n_nan} count(s) are NaN. Raw counts have no missing values; write 0 "
                "for undetected genes and re-export the matrix."
            )
        if np.isinf(vals).any():
            raise CosmicInputError(f"{where}: counts contain infinite values; re-export the raw counts.")
    n_neg = int((vals < 0).sum())
    if n_neg:
        raise CosmicInputError(
            f"{where}: {n_neg} count(s) are negative (minimum {vals.min():g}). Provide raw UMI "
            "counts, not scaled, centred or batch-corrected values."
        )
    if np.issubdtype(vals.dtype, np.floating):
        frac = np.abs(vals - np.rint(vals)) > 1e-6
        if frac.any():
            example = vals[frac][:3].tolist()
            src = adata.uns.get("counts_source")
            hint = (" (no layers['counts'] in the h5ad, so X was read; store the raw counts in "
                    "layers['counts'])" if src == "X" else "")
            raise CosmicInputError(
                f"{where}: {int(frac.sum())} count(s) are not integers (e.g. {example}){hint}. "
                "Provide raw UMI counts, not normalised, log-transformed or ambient-corrected "
                "values."
            )
    if vals.size == 0 or not np.any(vals):
        raise CosmicInputError(
            f"{where}: the count matrix is empty (all {adata.n_obs} x {adata.n_vars} counts are "
            "zero). Point the sample sheet 'counts' column at the raw counts."
        )

    bad = [i for i, n in enumerate(adata.var_names) if _bad_name(n)]
    if bad:
        raise CosmicInputError(
            f"{where}: {len(bad)} gene(s) have a missing or empty name (positions {bad[:5]}). "
            "Every gene needs a symbol (or an ID): fill the gene name column of the features file "
            "or the gene labels of the table."
        )
    obs_names = pd.Index(adata.obs_names.astype(str))
    if any(_bad_name(b) for b in obs_names):
        raise CosmicInputError(f"{where}: some barcodes are missing or empty; every cell needs a barcode.")
    if not obs_names.is_unique:
        dups = obs_names[obs_names.duplicated()].unique()
        raise CosmicInputError(
            f"{where}: {len(dups)} barcode(s) occur more than once (e.g. {list(dups[:5])}). Each "
            "cell must have one row; if the file merges several libraries, make barcodes unique "
            "(e.g. with a library suffix '-1', '-2') or split it into one sample per library."
        )

    X = adata.X
    X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    X = X.astype(np.float32)
    X.eliminate_zeros()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique.*")
        out = anndata.AnnData(X=X, obs=adata.obs.copy(), var=adata.var.copy())
    out.obs_names = obs_names
    out.var_names = pd.Index(adata.var_names.astype(str))
    if not out.var_names.is_unique:
        dups = out.var_names[out.var_names.duplicated()].unique()
        warnings.warn(
            f"{where}: {len(dups)} gene symbol(s) occur more than once (e.g. {list(dups[:5])}); "
            "made unique by appending '-1', '-2', ... (gene IDs, where present, are kept in "
            "var['gene_ids']).",
            stacklevel=3,
        )
        out.var_names_make_unique()
    for key in ("counts_orientation",):
        if key in adata.uns:
            out.uns[key] = adata.uns[key]
    return out


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RnaParams:
    """Parameters of the RNA stage (config block ``rna:``)."""

    min_genes: int = 200
    min_counts: int = 500
    max_counts: int | None = None
    max_mito_fraction: float = 0.2
    min_cells: int = 3
    n_top_genes: int = 2000
    hvg_flavor: str = "seurat"
    target_sum: float = 1e4
    n_pcs: int = 30
    seed: int = 0
    gene_symbol_column: str | None = None  # var column holding symbols when var_names are IDs
    library_size_key: str | None = None  # obs column of whole-transcriptome library sizes (gene-panel data)

    def __post_init__(self):
        def fail(key, want):
            raise CosmicInputError(
                f"config key rna.{key}: got {getattr(self, key)!r}; expected {want}."
            )

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        for key in ("min_genes", "min_counts", "min_cells", "seed"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 0:
                fail(key, "an integer >= 0")
        for key in ("n_top_genes", "n_pcs"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                fail(key, "an integer >= 1")
        if self.max_counts is not None and (not is_num(self.max_counts) or self.max_counts <= 0):
            fail("max_counts", "null (no upper limit) or a number > 0")
        if not is_num(self.max_mito_fraction) or not 0 <= self.max_mito_fraction <= 1:
            fail("max_mito_fraction", "a fraction between 0 and 1 (1 disables the filter)")
        if not is_num(self.target_sum) or self.target_sum <= 0:
            fail("target_sum", "a number > 0")
        if self.hvg_flavor not in HVG_FLAVORS:
            fail("hvg_flavor", f"one of {list(HVG_FLAVORS)}")

    @classmethod
    def from_config(cls, mapping: Mapping | None) -> RnaParams:
        """Build from the config's ``rna:`` mapping; unknown keys are an error."""
        from .config import params_from_config

        return params_from_config(cls, "rna", mapping)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Processing
# ---------------------------------------------------------------------------------------------

def use_gene_symbols(adata: anndata.AnnData, column: str, where: str = "RNA counts") -> anndata.AnnData:
    """Replace IDs in ``var_names`` by the symbols of ``var[column]`` (IDs kept in ``var["gene_ids"]``)."""
    if column not in adata.var:
        raise CosmicInputError(f"{where}: rna.gene_symbol_column '{column}' is not a var column; "
                               f"var has {list(adata.var.columns)}.")
    symbols = adata.var[column].astype(str)
    missing = symbols.isin(["", "nan", "None"])
    adata.var["gene_ids"] = adata.var_names.astype(str)
    adata.var_names = pd.Index(np.where(missing, adata.var_names.astype(str), symbols), dtype=object)
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    return adata


CELL_FILTERS = ("min_genes", "min_counts", "max_counts", "max_mito_fraction")


def process_counts(adata: anndata.AnnData, params: RnaParams | None = None, sample=None):
    """QC, filter, normalise, flag HVGs and run PCA. Returns ``(processed, dropped_cells)``.

    ``dropped_cells`` has one row per removed cell: ``barcode``, ``reason`` (the failed filters,
    ``;``-separated, named as their config keys), ``detail`` (values against thresholds) and the
    QC metrics. The input object is not modified.
    """
    params = params or RnaParams()
    where = describe(None, sample) if sample is not None else "RNA counts"
    adata = adata.copy()
    if "counts" in adata.layers:
        adata.X = adata.layers["counts"].copy()
    adata.X = adata.X.tocsr().astype(np.float32) if sp.issparse(adata.X) else sp.csr_matrix(
        np.asarray(adata.X, dtype=np.float32))
    n_in = adata.n_obs
    if n_in == 0 or adata.n_vars == 0:
        raise CosmicInputError(f"{where}: no cells or no genes to process ({adata.shape}).")
    if params.gene_symbol_column:
        use_gene_symbols(adata, params.gene_symbol_column, where)

    adata.var["mt"] = adata.var_names.str.startswith(MITO_PREFIXES)
    if not adata.var["mt"].any() and params.max_mito_fraction < 1:
        warnings.warn(
            f"{where}: no mitochondrial genes (names starting with 'MT-' or 'mt-'); the "
            "rna.max_mito_fraction filter has no effect.",
            stacklevel=2,
        )
    # Per-cell metrics only: per-gene ones would describe cells that QC then drops
    # (filter_genes adds var["n_cells"] on the kept cells).
    cell_qc, _ = sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False)
    for col in cell_qc.columns:
        adata.obs[col] = cell_qc[col]
    obs = adata.obs
    obs["mito_fraction"] = (obs["pct_counts_mt"] / 100.0).fillna(0.0)

    ng, tc, mf = obs["n_genes_by_counts"], obs["total_counts"], obs["mito_fraction"]
    no_limit = pd.Series(False, index=obs.index)
    fails = pd.DataFrame({
        "min_genes": ng < params.min_genes,
        "min_counts": tc < params.min_counts,
        "max_counts": tc > params.max_counts if params.max_counts is not None else no_limit,
        "max_mito_fraction": mf > params.max_mito_fraction,
    })
    dropped_mask = fails.any(axis=1).to_numpy()
    sub, d_obs = fails[dropped_mask], obs[dropped_mask]
    # Human-readable values against thresholds, built for the dropped cells only.
    details = {
        "min_genes": d_obs["n_genes_by_counts"].map(lambda v: f"{int(v)} genes < {params.min_genes}"),
        "min_counts": d_obs["total_counts"].map(lambda v: f"{v:g} counts < {params.min_counts}"),
        "max_counts": d_obs["total_counts"].map(lambda v: f"{v:g} counts > {params.max_counts}"),
        "max_mito_fraction": d_obs["mito_fraction"].map(
            lambda v: f"mito fraction {v:.3f} > {params.max_mito_fraction}"),
    }
    reason = pd.Series("", index=sub.index)
    detail = pd.Series("", index=sub.index)
    for key in CELL_FILTERS:
        hit = sub[key]
        sep_r = np.where(reason == "", "", ";")
        sep_d = np.where(detail == "", "", "; ")
        reason = reason.where(~hit, reason + sep_r + key)
        detail = detail.where(~hit, detail + sep_d + details[key])
    dropped = pd.DataFrame({
        "barcode": sub.index.astype(str),
        "reason": reason.to_numpy(),
        "detail": detail.to_numpy(),
        "total_counts": d_obs["total_counts"].to_numpy(),
        "n_genes_by_counts": d_obs["n_genes_by_counts"].to_numpy(),
        "mito_fraction": d_obs["mito_fraction"].to_numpy(),
    })
    if sample is not None:
        dropped.insert(0, "sample", sample)

    if dropped_mask.all():
        counts = {k: int(fails[k].sum()) for k in CELL_FILTERS if fails[k].any()}
        parts = [f"{k} removed {v} of {n_in}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
        summary = (f"median genes per cell {ng.median():g}, median counts {tc.median():g}, median "
                   f"mito fraction {mf.median():.3f}")
        keys = ", ".join(f"rna.{k}" for k in counts)
        raise CosmicInputError(
            f"{where}: no cells pass QC ({'; '.join(parts)}; {summary}). Relax {keys} in the "
            "config, or check that the counts are the filtered cell matrix."
        )

    adata = adata[~dropped_mask].copy()
    sc.pp.filter_genes(adata, min_cells=params.min_cells)
    if adata.n_vars == 0:
        raise CosmicInputError(
            f"{where}: no gene is detected in at least rna.min_cells={params.min_cells} of the "
            f"{adata.n_obs} cells passing QC. Lower rna.min_cells in the config."
        )

    adata.layers["counts"] = adata.X.copy()
    if params.library_size_key:
        # A gene panel's own total is not the cell's library size; divide by the recorded one.
        if params.library_size_key not in adata.obs:
            raise CosmicInputError(f"{where}: rna.library_size_key '{params.library_size_key}' is not an obs column "
                                   f"of the count matrix; obs has {list(adata.obs.columns)[:20]}.")
        size = pd.to_numeric(adata.obs[params.library_size_key], errors="coerce").to_numpy(np.float64)
        if not np.all(np.isfinite(size)) or np.any(size <= 0):
            raise CosmicInputError(f"{where}: obs['{params.library_size_key}'] must hold positive numbers for "
                                   "every cell (rna.library_size_key).")
        adata.X = sp.csr_matrix(sp.diags((params.target_sum / size).astype(np.float32)) @ adata.X)
    else:
        sc.pp.normalize_total(adata, target_sum=params.target_sum)
    sc.pp.log1p(adata)

    n_top = min(params.n_top_genes, adata.n_vars)
    if n_top >= adata.n_vars:
        adata.var["highly_variable"] = True
    else:
        try:
            if params.hvg_flavor == "seurat_v3":
                sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat_v3", layer="counts")
            else:
                sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor=params.hvg_flavor)
        except ImportError as err:
            raise CosmicInputError(
                f"{where}: rna.hvg_flavor='{params.hvg_flavor}' needs a package that is not "
                f"installed ({err}). Install scikit-misc in the rule's environment or set "
                "rna.hvg_flavor to 'seurat' or 'cell_ranger'."
            ) from err
    hvg = adata.var["highly_variable"].to_numpy(dtype=bool)

    n_comps = min(params.n_pcs, adata.n_obs - 1, int(hvg.sum()) - 1)
    if n_comps < 1:
        raise CosmicInputError(
            f"{where}: too few cells ({adata.n_obs}) or highly variable genes ({int(hvg.sum())}) "
            "after QC for PCA (need at least 2 of each). Relax the QC thresholds in the rna: "
            "config block."
        )
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", svd_solver="arpack",
              random_state=params.seed)

    if sample is not None:
        adata.obs["sample"] = pd.Categorical([sample] * adata.n_obs)
    adata.uns["cosmic_rna"] = {
        "params": {k: v for k, v in params.to_dict().items() if v is not None},
        "n_cells_input": int(n_in),
        "n_cells_kept": int(adata.n_obs),
        "n_cells_dropped": {k: int(fails[k].sum()) for k in CELL_FILTERS},
        "n_genes_kept": int(adata.n_vars),
        "n_highly_variable": int(hvg.sum()),
        "n_pcs": int(n_comps),
    }
    return adata, dropped


# ---------------------------------------------------------------------------------------------
# QC figure
# ---------------------------------------------------------------------------------------------

def plot_qc(adata: anndata.AnnData, path, params: RnaParams | None = None,
            dropped: pd.DataFrame | None = None) -> None:
    """Histograms of total counts, genes per cell and mito fraction, thresholds drawn.

    Works on a processed object (thresholds from ``uns["cosmic_rna"]`` unless ``params`` is
    given) or on raw counts (QC metrics computed on a copy). With ``dropped`` (the table from
    :func:`process_counts`) the removed cells are stacked on the kept ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if params is None:
        stored = adata.uns.get("cosmic_rna", {}).get("params")
        params = RnaParams.from_config(stored) if stored is not None else RnaParams()
    obs = adata.obs
    if not {"total_counts", "n_genes_by_counts", "pct_counts_mt"} <= set(obs.columns):
        tmp = anndata.AnnData(X=adata.layers["counts"] if "counts" in adata.layers else adata.X,
                              obs=pd.DataFrame(index=adata.obs_names),
                              var=pd.DataFrame(index=adata.var_names))
        tmp.var["mt"] = tmp.var_names.str.startswith(MITO_PREFIXES)
        obs, _ = sc.pp.calculate_qc_metrics(tmp, qc_vars=["mt"], percent_top=None, log1p=False)
    kept = {
        "total_counts": obs["total_counts"].to_numpy(float),
        "n_genes_by_counts": obs["n_genes_by_counts"].to_numpy(float),
        "mito_fraction": (obs["pct_counts_mt"].to_numpy(float) / 100.0),
    }
    panels = [
        ("total_counts", "Total counts per cell", "total UMI counts",
         [("min_counts", params.min_counts), ("max_counts", params.max_counts)]),
        ("n_genes_by_counts", "Genes detected per cell", "genes with counts > 0",
         [("min_genes", params.min_genes)]),
        ("mito_fraction", "Mitochondrial fraction", "fraction of counts from MT- genes",
         [("max_mito_fraction", params.max_mito_fraction)]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, title, xlabel, thresholds) in zip(axes, panels):
        data = [np.nan_to_num(kept[col])]
        labels = ["kept"]
        if dropped is not None and len(dropped):
            data.append(np.nan_to_num(dropped[col].to_numpy(float)))
            labels.append("dropped")
        ax.hist(data, bins=50, stacked=True, label=labels, color=["#4c72b0", "#dd8452"][: len(data)])
        for key, value in thresholds:
            if value is not None:
                ax.axvline(value, color="crimson", linestyle="--", linewidth=1.2, label=f"{key} = {value:g}")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cells")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------------------------------------
# External embeddings
# ---------------------------------------------------------------------------------------------

def _npy_barcodes(path: Path) -> Path | None:
    stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.stem
    for ext in (".barcodes.tsv", ".barcodes.txt"):
        cand = path.with_name(stem + ext)
        if cand.is_file():
            return cand
    return None


def read_embedding(path, key=None, sample=None) -> pd.DataFrame:
    """Read an external embedding as a DataFrame indexed by barcode (rows) x dimensions."""
    path = Path(path)
    where = describe(path, sample)
    if not path.is_file():
        raise CosmicInputError(f"{where}: embedding file not found; fix its path in the config.")
    name = _strip_compression(path.name.lower())
    if name.endswith(".h5ad"):
        src = anndata.read_h5ad(path)
        if key is None:
            keys = list(src.obsm.keys())
            if len(keys) == 1:
                key = keys[0]
            elif not keys:
                values = src.X
            else:
                raise CosmicInputError(
                    f"{where}: several embeddings in obsm {keys}; name the one to use (its "
                    "'key' in the config)."
                )
        if key is not None:
            if key not in src.obsm:
                raise CosmicInputError(
                    f"{where}: no obsm[{key!r}] (available: {list(src.obsm.keys())}); fix the "
                    "embedding 'key' in the config."
                )
            values = src.obsm[key]
        if isinstance(values, pd.DataFrame):
            values = values.to_numpy()
        values = values.toarray() if sp.issparse(values) else np.asarray(values)
        barcodes = src.obs_names
    elif name.endswith(".npy"):
        bc_file = _npy_barcodes(path)
        if bc_file is None:
            stem = path.name[: -len(".npy")]
            raise CosmicInputError(
                f"{where}: a .npy embedding needs its barcodes beside it, one per line, in "
                f"'{stem}.barcodes.tsv' or '{stem}.barcodes.txt' (row i of the array = line i)."
            )
        values = np.load(path, mmap_mode="r")
        barcodes = pd.read_csv(bc_file, header=None, sep="\t", dtype=str,
                               keep_default_na=False)[0]
        if values.ndim != 2 or values.shape[0] != len(barcodes):
            raise CosmicInputError(
                f"{where}: array of shape {values.shape} does not match the {len(barcodes)} "
                f"barcodes in '{bc_file.name}'; expected a 2-D array with one row per barcode."
            )
    elif name.endswith((".csv", ".tsv", ".txt")):
        df = pd.read_csv(path, sep="," if name.endswith(".csv") else "\t", index_col=0)
        non_numeric = [c for c, t in zip(df.columns, df.dtypes) if not pd.api.types.is_numeric_dtype(t)]
        if non_numeric or df.shape[1] == 0:
            raise CosmicInputError(
                f"{where}: expected the barcode in the first column and numbers in the others "
                f"(non-numeric columns: {non_numeric[:5]})."
            )
        values, barcodes = df.to_numpy(), df.index
    else:
        raise CosmicInputError(
            f"{where}: unsupported embedding file; use .h5ad (obsm[key]), .npy with a "
            "'<stem>.barcodes.tsv' file beside it, or .csv/.tsv (barcode, then one column per "
            "dimension)."
        )
    barcodes = pd.Index(pd.Index(barcodes).astype(str))
    if not barcodes.is_unique:
        dups = barcodes[barcodes.duplicated()].unique()
        raise CosmicInputError(f"{where}: barcode(s) listed more than once, e.g. {list(dups[:5])}.")
    return pd.DataFrame(np.asarray(values), index=barcodes)


def attach_embedding(adata: anndata.AnnData, path, name: str, key=None, sample=None) -> anndata.AnnData:
    """Store an external embedding as ``adata.obsm[f"X_{name}"]`` in ``adata``'s cell order.

    Every barcode of ``adata`` must be in the file; extra barcodes are ignored. Modifies and
    returns ``adata``.
    """
    where = describe(path, sample)
    if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
        raise CosmicInputError(f"{where}: embedding name {name!r} must be letters, digits or '_'.")
    emb = read_embedding(path, key=key, sample=sample)
    wanted = pd.Index(adata.obs_names.astype(str))
    missing = wanted.difference(emb.index, sort=False)
    if len(missing):
        raise CosmicInputError(
            f"{where}: {len(missing)} of {len(wanted)} cells have no row in the '{name}' "
            f"embedding (e.g. {list(missing[:5])}; the file's barcodes look like "
            f"{list(emb.index[:3])}). Embed all cells passing QC, with the same barcodes as the "
            "counts file."
        )
    values = emb.loc[wanted].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = wanted[bad.any(axis=1)]
        raise CosmicInputError(
            f"{where}: the '{name}' embedding has {int(bad.sum())} NaN/infinite value(s) for "
            f"{len(rows)} cell(s) (e.g. {list(rows[:5])}); recompute it for those cells."
        )
    adata.obsm[f"X_{name}"] = values.astype(np.float32)
    return adata


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def write_h5ad(adata: anndata.AnnData, path) -> None:
    """Write ``adata`` to ``path`` atomically (a crashed job leaves no partial file)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
