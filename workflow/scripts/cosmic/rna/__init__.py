"""RNA stage: read raw counts, validate them, QC-filter, normalise, and embed the cells.

Readers are scanpy's (``read_10x_h5``, ``read_10x_mtx``, ``read_mtx``) and anndata's
(``read_h5ad``); processing is scanpy's (``calculate_qc_metrics``, ``filter_genes``,
``normalize_total``, ``log1p``, ``highly_variable_genes``, ``pca``). This package adds what
they do not: format and orientation detection, validation of user input with messages that
name the file, the sample and the fix, a per-cell report of what QC dropped and why, and the
plug-in of external transcriptomic embeddings (scGPT, Geneformer, UCE, scVI, ...) keyed by
barcode.

Output contract (``rna/{sample}.h5ad``): ``layers["counts"]`` raw counts, ``X`` log-normalised,
QC metrics in ``obs`` (``total_counts``, ``n_genes_by_counts``, ``pct_counts_mt``,
``mito_fraction``), ``var["highly_variable"]`` (all genes kept), ``obsm["X_pca"]`` and optional
``obsm["X_<name>"]``.

Modules: :mod:`.readers` (formats), :mod:`.orientation` (genes or barcodes on which axis),
:mod:`.validate` (checks of the counts), :mod:`.process` (parameters, QC, normalisation, HVGs,
PCA), :mod:`.embeddings` (external embeddings), :mod:`.figures` (QC figure), :mod:`.output`
(writing).
"""

from .embeddings import attach_embedding, read_embedding
from .figures import plot_qc
from .orientation import detect_orientation
from .output import write_h5ad
from .process import CELL_FILTERS, HVG_FLAVORS, MITO_PREFIXES, RnaParams, process_counts, use_gene_symbols
from .readers import FORMATS, ORIENTATIONS, infer_format, read_counts
from .validate import validate_counts

__all__ = [
    "CELL_FILTERS", "FORMATS", "HVG_FLAVORS", "MITO_PREFIXES", "ORIENTATIONS", "RnaParams", "attach_embedding",
    "detect_orientation", "infer_format", "plot_qc", "process_counts", "read_counts", "read_embedding",
    "use_gene_symbols", "validate_counts", "write_h5ad",
]
