"""Drug response: treated vs untreated and resistant vs responsive cells, in both modalities.

Two comparisons are made on the paired cohort (``paired/cohort.h5ad``):

``treatment``
    treated cells (``obs[treatment_key] != control``) against control cells, all cells;
``response``
    ``resistant`` against ``responsive`` cells, treated cells only (``obs[response_key]``).

A comparison without two groups of at least :data:`MIN_CELLS` cells (for example a
sample-level response such as ``mixed``, or a cohort without control cells) is skipped and
the reason is recorded in ``summary.json``; its tables are written empty and its figure panels
say "not available: <reason>". A missing treatment column is an input error; a missing
response column only skips the ``response`` comparison.

For each comparison (the tested group against the reference):

* differential expression: scanpy's Wilcoxon rank-sum test (``sc.tl.rank_genes_groups``) on
  the log-normalised ``X`` with Benjamini-Hochberg adjusted p values and log2 fold changes,
  plus group means and Cohen's d on the log-normalised scale;
* morphology: per region-property feature (``obsm["X_morph"]``) a two-sided Mann-Whitney U
  test, BH FDR over features, Cohen's d, the AUC ``P(group > reference)`` and the
  rank-biserial correlation ``2 AUC - 1``;
* classifiers: standardised, class-balanced logistic regression, stratified k-fold; ROC AUC
  and balanced accuracy of held-out predictions only, from the RNA embedding (``X_rna``),
  the region-property features (``X_morph``), the foundation embedding (``X_fm``, when
  present) and RNA + region properties.

Morphology-associated genes: genes ranked by ``max(r2_cosmic, 0) * |d|``, where ``r2_cosmic``
is the held-out R² of the gene's expression predicted from morphology by COSMIC
(``variance_decomposition.tsv``, direction ``morphology_to_rna``) and ``d`` is the gene's
Cohen's d between resistant and responsive treated cells. The product is high only for genes
that morphology predicts *and* that separate the resistant state; Cohen's d (not the log fold
change) keeps lowly expressed genes from dominating. The DE FDR is shown beside the score.

With the demo's ground truth (``results/demo``), :func:`cosmic.truth.drug_response.demo_recovery`
scores the planted genes and morphology shifts that the analysis should find.

Modules: :mod:`.params` (config block), :mod:`.comparisons` (which cells are compared),
:mod:`.statistics` (DE, morphology tests, effect sizes), :mod:`.classification` (cross-validated
classifiers), :mod:`.genes` (morphology-associated genes), :mod:`.figures` and :mod:`.run` (the
stage: :func:`run_drug_response`).
"""

from .classification import (CLASSIFIER_COLUMNS, FEATURE_SET_OBSM, FEATURE_SETS, classifiers,
                             cross_validated_classifier)
from .comparisons import COMPARISON_TITLES, COMPARISONS, Comparison, define_comparisons
from .figures import (plot_classifier_auc, plot_figures, plot_morphology_associated_genes,
                      plot_morphology_effects, plot_volcano)
from .genes import ASSOC_COLUMNS, RANKING, VARIANCE_COLUMNS, morphology_associated_genes, read_variance_table
from .params import MIN_CELLS, DrugResponseParams
from .run import FIGURES, TABLES, run_drug_response
from .statistics import DE_COLUMNS, MORPH_COLUMNS, cohens_d, differential_expression, morphology_tests

__all__ = [
    "ASSOC_COLUMNS", "CLASSIFIER_COLUMNS", "COMPARISONS", "COMPARISON_TITLES", "DE_COLUMNS", "FEATURE_SETS",
    "FEATURE_SET_OBSM", "FIGURES", "MIN_CELLS", "MORPH_COLUMNS", "RANKING", "TABLES", "VARIANCE_COLUMNS",
    "Comparison", "DrugResponseParams", "classifiers", "cohens_d", "cross_validated_classifier",
    "define_comparisons", "differential_expression", "morphology_associated_genes", "morphology_tests",
    "plot_classifier_auc", "plot_figures", "plot_morphology_associated_genes", "plot_morphology_effects",
    "plot_volcano", "read_variance_table", "run_drug_response",
]
