"""Names of the files each stage writes, shared by the rule files and the package.

``workflow/rules/*.smk`` declare these paths and the package writes them, so both read the names
from here (this module imports nothing heavy: the Snakefile imports it at parse time).
Every figure ``<name>.png`` comes with a caption ``<name>.txt`` beside it.
"""

from __future__ import annotations

COSMIC_FIGURES = ("gene_r2_ranked", "variance_decomposition", "cell_type_confusion")
# Drawn by its own rule (`cosmic_nuclei_figure`) from the generated images and the crop banks.
GENERATED_NUCLEI_FIGURE = "generated_nuclei"
# (1 + n_samples) x test cells x C x S x S float16; index 0 = conditional mean.
GENERATED_IMAGES = "predictions_generated_images.npy"
# cosmic/generate/figures/: the pixel-space generator's figures (split 0, test cells)
GENERATE_FIGURES = ("generated_vs_real", "generated_along_cycle", "generated_distributions")

CELL_CYCLE_FIGURES = ("score_plane", "dna_content", "area_along_cycle", "phase_confusion", "nuclei_along_cycle")
DRUG_RESPONSE_FIGURES = ("volcano", "morphology_effects", "classifier_auc", "morphology_associated_genes")


def figure_files(folder: str, names) -> list[str]:
    """``folder/<name>.png`` and its caption ``folder/<name>.txt`` for every figure name."""
    return [f"{folder}/{name}.{ext}" for name in names for ext in ("png", "txt")]
