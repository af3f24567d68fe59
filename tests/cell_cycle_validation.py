"""Validation of the RNA cell-cycle scoring on real labelled data, used by the tests only.

``validate_peco_fucci``: the continuous position (and the ``rna_pc_angle`` baseline, with the
stage's bootstrap table) against the FUCCI angle of the peco / fucci-seq iPSCs;
``validate_buettner``: phase calls against the FACS phase of the Buettner et al. 2015 mESCs (for
the baseline, label-free calls from the nearest programme peak on the PC angle). The measured
numbers are in :mod:`cosmic.cell_cycle` and asserted in ``tests/test_cell_cycle.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cosmic.cell_cycle import (PHASES, circular_agreement, circular_correlation, circular_correlation_fl,
                               phase_agreement, phase_from_position, score_cell_cycle)
from cosmic.cell_cycle.agreement import position_agreement_rows, rna_pc_angle
from cosmic.cell_cycle.circular import circular_scores, peak_direction
from cosmic.cell_cycle.scoring import dense
from cosmic.errors import describe


def validate_peco_fucci(path, seed: int = 0, n_neighbors: int = 10, method: str = "pca") -> dict:
    """RNA position of the peco / fucci-seq iPSCs against their FUCCI angle ``obs["theta"]``.

    Counts (``X``, 101 genes) are normalised by the endogenous library size ``obs["mol_hs"]``
    (the whole transcriptome, not just these 101 cyclic genes) and log1p-transformed; genes are
    named by ``var["hgnc"]``. Returns the circular correlation, the offset-free agreement and,
    for comparison, the same numbers for the angle of the Tirosh scores (``score_plane``) and for
    the ``rna_pc_angle`` baseline (PC1/PC2 of the log expression of all 101 genes: the file has no
    ``obsm["X_pca"]``), plus ``table``: the stage's ``position_agreement.tsv`` rows (reference
    ``fucci_theta``, 200 bootstrap resamples seeded with ``seed``).
    """
    import anndata as ad

    path = Path(path)
    a = ad.read_h5ad(path)
    counts = dense(a.X)
    lib = a.obs["mol_hs"].to_numpy(float) if "mol_hs" in a.obs else counts.sum(1)
    lib = np.where(lib > 0, lib, np.nan)
    x = np.log1p(counts / lib[:, None] * 1e4)
    var = pd.DataFrame(index=pd.Index(a.var["hgnc"].astype(str) if "hgnc" in a.var else a.var_names.astype(str)))
    b = ad.AnnData(X=np.nan_to_num(x), obs=pd.DataFrame(index=a.obs_names), var=var)
    b.var_names_make_unique()
    theta = a.obs["theta"].to_numpy(float)
    out = {"dataset": path.name, "n_cells": int(b.n_obs), "normalisation": "counts / mol_hs x 1e4, log1p"}
    for m in (method, "score_plane" if method != "score_plane" else "pca"):
        cells, info = score_cell_cycle(b, organism="human", seed=seed, n_neighbors=n_neighbors, method=m,
                                       where=describe(path))
        agree = circular_agreement(cells["cycle_position"], theta)
        res = {"circular_correlation": circular_correlation(cells["cycle_position"], theta),
               "circular_correlation_fl": circular_correlation_fl(cells["cycle_position"], theta),
               "circular_agreement": agree["agreement"], "direction": agree["direction"],
               "offset": agree["offset"], "median_error": agree["median_error"]}
        if m == method:
            out.update(res, method=m, n_s_genes=info["genes"]["S"]["present"],
                       n_g2m_genes=info["genes"]["G2M"]["present"])
            position = cells["cycle_position"].to_numpy(float)
        else:
            out["alternative"] = {"method": m, **res}
    baseline, source = rna_pc_angle(b, seed=seed)
    out["baseline_rna_pc_angle"] = {"source": source, **circular_scores(baseline, theta)}
    out["table"] = position_agreement_rows("fucci_theta", position, baseline, theta, seed=seed)
    return out


def validate_buettner(path, seed: int = 0, n_neighbors: int = 10, method: str = "pca") -> dict:
    """Phase calls of the Buettner et al. 2015 mESCs against their FACS phase ``obs["phase"]``.

    Read counts are normalised with scanpy (``normalize_total`` to 10,000, ``log1p``) and scored
    with the mouse lists. Returns accuracy (and balanced accuracy, confusion matrices with rows =
    FACS phase) of scanpy's Tirosh calls and of the label-free calls from the position, and
    ``baseline_rna_pc_angle``: the same label-free rule (nearest programme peak) applied to the
    ``rna_pc_angle`` baseline (PC1/PC2 of the log expression of all genes), and the baseline's
    offset-free agreement with the position. There is no measured angle here, so no
    ``position_agreement`` table.
    """
    import anndata as ad
    import scanpy as sc

    path = Path(path)
    a = ad.read_h5ad(path)
    facs = a.obs["phase"].astype(str).to_numpy()
    b = ad.AnnData(X=a.X.astype(np.float32), obs=pd.DataFrame(index=a.obs_names), var=pd.DataFrame(index=a.var_names))
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    cells, info = score_cell_cycle(b, organism="mouse", seed=seed, n_neighbors=n_neighbors, method=method,
                                   where=describe(path))
    tir = phase_agreement(facs, cells["phase"])
    pos = phase_agreement(facs, cells["phase_position"])
    baseline, source = rna_pc_angle(b, seed=seed)
    programmes = {"G1": -(cells["S_program"] + cells["G2M_program"]), "S": cells["S_program"],
                  "G2M": cells["G2M_program"]}
    peaks = {ph: peak_direction(baseline, w.to_numpy(float)) for ph, w in programmes.items()}
    base = phase_agreement(facs, phase_from_position(baseline, peaks))
    return {"dataset": path.name, "n_cells": int(b.n_obs), "method": method,
            "n_s_genes": info["genes"]["S"]["present"], "n_g2m_genes": info["genes"]["G2M"]["present"],
            "accuracy_tirosh": tir["accuracy"], "accuracy_position": pos["accuracy"],
            "balanced_accuracy_tirosh": tir["balanced_accuracy"],
            "balanced_accuracy_position": pos["balanced_accuracy"],
            "labels": list(PHASES), "confusion_tirosh": tir["confusion"], "confusion_position": pos["confusion"],
            "baseline_rna_pc_angle": {"source": source, "accuracy": base["accuracy"],
                                      "balanced_accuracy": base["balanced_accuracy"], "confusion": base["confusion"],
                                      "agreement_with_position": circular_agreement(cells["cycle_position"],
                                                                                    baseline)["agreement"]}}
