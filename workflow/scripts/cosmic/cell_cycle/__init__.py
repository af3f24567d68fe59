"""Cell cycle read from RNA and from nuclear morphology in the same cells.

Modules
    ``params`` (the ``cell_cycle:`` config block, constants), ``genes`` (Tirosh lists and finding
    them in the data), ``scoring`` (RNA scores, position, phase), ``circular`` (circular
    statistics), ``morphology`` (DNA content, area, morphology classifiers), ``agreement`` (phase
    agreement, reference angle, the ``rna_pc_angle`` baseline, ``position_agreement.tsv``),
    ``nuclei_strip`` (which nuclei the strip shows), ``figures``, ``run`` (the stage,
    :func:`run_cell_cycle`). Scoring against the demo's ground truth lives in
    :mod:`cosmic.truth.cell_cycle`.

RNA side
    * **Tirosh scoring**: :func:`scanpy.tl.score_genes_cell_cycle` with the shipped Tirosh et al.
      (2016) S and G2/M lists (``resources/cell_cycle``), seeded: ``S_score``, ``G2M_score`` and
      scanpy's discrete ``phase`` (G1 when both scores are negative, else the larger one). Large
      cohorts are scored a chunk of cells at a time from the file, with the control genes of the
      whole cohort (:func:`scoring.tirosh_scores`).
    * **Continuous position** (``cycle_position``, radians in [0, 2π)): the angle of the first two
      principal components of the z-scored expression of the cycle genes, averaged over each
      cell's nearest neighbours in that PCA space (the Revelio / tricycle idea: cycle genes trace a
      loop in their leading PCs). The direction is set so that the S programme peaks before the
      G2/M programme and the G2/M programme before the G1 state (both programmes low); the origin
      is set so that the G2/M programme peaks at 0.9 x 2π, so 0 is close to cell division
      (the demo's convention). Nothing is fitted on phase labels.
    * **Phase from the position** (``phase_position``): each cell takes the phase whose programme
      peaks nearest to it on the circle (peaks: resultant direction of the S programme, of the G2/M
      programme and of "both low" for G1). Label-free, so its accuracy on FACS-sorted cells is an
      honest held-out number.

    Measured on real data (seed 0, defaults; the validators are ``validate_peco_fucci`` and
    ``validate_buettner`` in ``tests/cell_cycle_validation.py``, asserted in
    ``tests/test_cell_cycle.py``): peco / fucci-seq (888 iPSCs, position vs FUCCI angle):
    offset-free agreement 0.40, Fisher-Lee 0.11, Jammalamadaka-SenGupta -0.04 (unstable here, see
    below), against 0.35, -0.07 and 0.37 for the angle of the Tirosh scores; Buettner et al. 2015
    (182 mESCs, FACS G1 / S / G2M): accuracy 0.69 from the position against 0.47 for scanpy's
    Tirosh rule.
    The orientation assumes the data hold non-cycle genes: when the library is normalised over
    cycle genes only (as a 101-gene matrix is), "both programmes low" is a compositional artefact
    and the position may come out reflected.
    * **Baseline** ``rna_pc_angle`` (:func:`rna_pc_angle`): the plain angle of PC1/PC2 of the
      cells' RNA PCA (``obsm["X_pca"]``, else a PCA of the log expression over all genes), scored
      with the same offset-free agreement on the same cells; ``position_agreement.tsv`` gives
      both with bootstrap intervals and their paired difference. It beats the position on both
      real sets: peco agreement 0.457 (95 % bootstrap CI 0.418-0.493) against 0.400 (0.361-0.450),
      paired difference -0.057 (-0.089 to -0.020); Buettner label-free phase accuracy 0.90 from the
      PC angle's nearest programme peak against 0.69. Both sets favour an all-gene PCA: peco's 101
      genes are the ones most cyclic along the FUCCI angle (chosen with it), and each Buettner
      phase was sorted and captured apart (96 cells per phase), so their PCs may carry capture
      effects as well as the cycle. The same PCA restricted to the cycle genes, unsmoothed,
      gives 0.39 on peco.

Morphology side
    * **DNA content**: a two-component Gaussian mixture on log integrated DNA intensity per sample
      (seeded) gives the 2N and 4N peaks; DNA content in N is ``2 exp(log DNA - mu_2N)``. Cells
      nearer 4N are G2M, nearer 2N G1, and cells between the two peaks are called S (the S-phase
      shoulder of a DNA histogram) when their larger posterior is below ``s_max_posterior`` or they
      lie outside the central 95% of both peaks.
    * **Nuclear area** along the RNA position.
    * **Classifiers** from region-property features (``obsm["X_morph"]``) and the foundation
      embedding (``obsm["X_fm"]``) trained on the RNA phase, with held-out predictions only
      (stratified ``cross_val_predict``); ridge regression of (cos, sin) of the RNA position gives
      a held-out morphology position.

Circular statistics
    * :func:`circular_correlation`: Jammalamadaka & SenGupta (2001) correlation coefficient,
      ``sum sin(a - mean a) sin(b - mean b) / sqrt(sum sin^2(a - mean a) sum sin^2(b - mean b))``
      with circular means. Invariant to rotating either variable, changes sign when one is
      reflected; unreliable when a variable is nearly uniform (its mean direction is then
      ill-defined), hence also
    * :func:`circular_agreement`: offset- and direction-free agreement, the mean resultant length
      of ``a - d b`` maximised over the direction ``d`` in {+1, -1}: 1 when one variable is a
      rotation (or reflection) of the other, about 1/sqrt(n) for independent angles; returned
      with the best offset, direction and the median circular error after alignment.
"""

from __future__ import annotations

from .agreement import phase_agreement, position_agreement_rows, rna_pc_angle, write_position_agreement
from .circular import circular_agreement, circular_correlation, circular_correlation_fl
from .genes import GENE_ALIASES, CycleGenes, cell_cycle_genes, gene_list_paths, match_genes, read_gene_list
from .morphology import (DnaContentModel, dna_content_phases, find_feature, log_dna, morphology_phase_cv,
                         morphology_position_cv)
from .params import (AREA_FEATURE, DNA_FEATURE, FIGURES, G2M_ANCHOR, ORGANISMS, PHASE_COLORS, PHASES,
                     POSITION_METHODS, RESOURCES, TWO_PI, CellCycleParams)
from .run import run_cell_cycle
from .scoring import cycle_position, phase_from_position, score_cell_cycle, tirosh_scores

__all__ = [
    "AREA_FEATURE", "DNA_FEATURE", "FIGURES", "G2M_ANCHOR", "GENE_ALIASES", "ORGANISMS", "PHASE_COLORS", "PHASES",
    "POSITION_METHODS", "RESOURCES", "TWO_PI", "CellCycleParams", "CycleGenes", "DnaContentModel",
    "cell_cycle_genes", "circular_agreement", "circular_correlation", "circular_correlation_fl", "cycle_position",
    "dna_content_phases", "find_feature", "gene_list_paths", "log_dna", "match_genes", "morphology_phase_cv",
    "morphology_position_cv", "phase_agreement", "phase_from_position", "position_agreement_rows",
    "read_gene_list", "rna_pc_angle", "run_cell_cycle", "score_cell_cycle", "tirosh_scores",
    "write_position_agreement",
]
