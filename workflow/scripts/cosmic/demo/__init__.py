"""Embedded IRIS-like demo dataset with known ground truth.

One latent state per cell drives both modalities the way biology does, and each modality
also carries private variation the other cannot explain:

shared state (drives images *and* transcriptome)
    cell type (luminal / basal / neuroendocrine), continuous cell-cycle position, a continuous
    chromatin-compaction program ``z_shared``, treatment, and, in treated cells, the response
    (responsive cells arrest in mitosis, slip into polyploidy, grow lobed nuclei with micronuclei).
RNA-private
    library size, a 3-dimensional expression program ``z_rna``, mitochondrial load, and the
    resistance state of *untreated* cells (resistance genes are expressed, but untreated
    nuclei do not show it).
morphology-private
    nuclear elongation and orientation, boundary irregularity, the chromatin texture pattern,
    staining efficiency, optics (blur, background, noise).

The generator writes, per sample, multi-channel OME-TIFF fields of view (DAPI + CellMask),
the true label masks, a 10x-style count matrix folder, and a pairing table (barcode -> image
and recorded nucleus position); plus a ground-truth table per nucleus, a gene table saying
which program drives each gene and its oracle ceiling, the morphology-feature ceilings and
the totals. Oracle ceilings are Monte Carlo estimates of the fraction of variance that the
true shared state explains (``1 - E[Var(y | shared)] / Var(y)``), in the spaces later stages
score in: log-normalised expression (``normalize_total`` to 1e4 + ``log1p``) and region-
property features measured on the true masks.

Modules: :mod:`.settings` (settings and file layout, read by the Snakefile at parse time),
:mod:`.states` (latent cell states), :mod:`.render` (nuclei, fields of view, image files),
:mod:`.expression` (gene table, counts, 10x files), :mod:`.oracle` (oracle ceilings) and
:mod:`.dataset` (:func:`generate`, the driver).
"""

# workflow/rules/common.smk imports this package at parse time: no torch, scanpy or matplotlib here.
from .dataset import generate
from .expression import (MITO_GENES, RESISTANCE_GENES, RESOURCES, RESPONSE_GENES, TYPE_MARKERS, build_gene_table,
                         expression_log_weights, log_normalise, random_barcodes, sample_counts, write_10x_mtx)
from .oracle import (explained_fraction, measure_isolated, morphology_oracle, oracle_ceilings, redraw_rna_private,
                     rna_oracle, workflow_measure)
from .render import (CHANNEL_NAMES, DAPI_DENSITY, REFERENCE_AREA, RenderedNucleus, compose_field, form_image,
                     nucleus_area, render_nucleus, write_mask, write_ome_tiff)
from .settings import DemoSettings, image_names, sample_paths, sample_sheet
from .states import (CELL_TYPES, PHASE_BOUNDS, TYPE_MORPHOLOGY, TYPE_PROPORTIONS, dna_content, draw_cell_states,
                     morphology_traits, phase_of)


__all__ = [
    "CELL_TYPES", "CHANNEL_NAMES", "DAPI_DENSITY", "MITO_GENES", "PHASE_BOUNDS", "REFERENCE_AREA",
    "RESISTANCE_GENES", "RESOURCES", "RESPONSE_GENES", "TYPE_MARKERS", "TYPE_MORPHOLOGY", "TYPE_PROPORTIONS",
    "DemoSettings", "RenderedNucleus", "build_gene_table", "compose_field", "dna_content", "draw_cell_states",
    "explained_fraction", "expression_log_weights", "form_image", "generate", "image_names", "log_normalise",
    "measure_isolated", "morphology_oracle", "morphology_traits", "nucleus_area", "oracle_ceilings", "phase_of",
    "random_barcodes", "redraw_rna_private", "render_nucleus", "rna_oracle", "sample_counts", "sample_paths",
    "sample_sheet", "workflow_measure", "write_10x_mtx", "write_mask", "write_ome_tiff",
]
