"""How close the `cell_cycle` stage came to the demo's true cycle position, phase and DNA content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..cell_cycle.agreement import BASELINE, phase_agreement
from ..cell_cycle.circular import circular_agreement, circular_correlation, circular_correlation_fl
from ..cell_cycle.params import TWO_PI
from ..errors import CosmicInputError, describe


def load_truth_cells(truth) -> pd.DataFrame | None:
    """The demo's ``ground_truth.tsv`` (a directory holding it, the file, or a frame)."""
    if truth is None:
        return None
    if isinstance(truth, pd.DataFrame):
        table = truth
    else:
        p = Path(truth)
        p = p / "ground_truth.tsv" if p.is_dir() else p
        if not p.exists():
            raise CosmicInputError(f"{describe(p)}: demo ground truth not found; run the demo rule or pass truth=None")
        table = pd.read_csv(p, sep="\t")
    need = {"sample", "barcode", "cycle_position", "phase"}
    if not need <= set(table.columns):
        raise CosmicInputError(f"demo ground truth lacks the columns {sorted(need - set(table.columns))}")
    table = table[table["barcode"].notna()]
    return table.drop_duplicates(["sample", "barcode"])


def truth_phase(phase) -> np.ndarray:
    """The generator's phase names (G2, M, G2/M) as the stage's G1 / S / G2M."""
    return pd.Series(phase, dtype=object).replace({"G2": "G2M", "M": "G2M", "G2/M": "G2M"}).to_numpy()


def _merge_truth(cells: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``cells`` (same rows, same order) with the truth of the same (sample, barcode) as
    ``true_position``, ``true_phase`` and ``true_dna_content``."""
    return cells.merge(truth[["sample", "barcode", "cycle_position", "phase"]
                             + [c for c in ("dna_content",) if c in truth]].rename(
        columns={"cycle_position": "true_position", "phase": "true_phase", "dna_content": "true_dna_content"}),
        on=["sample", "barcode"], how="left")


def true_cycle_angle(cells: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """The true cycle position of each row of ``cells`` in radians (NaN where the demo truth has no
    such (sample, barcode)): the reference ``demo_truth`` of ``position_agreement.tsv``."""
    return _merge_truth(cells, truth)["true_position"].to_numpy(float) * TWO_PI


def truth_summary(cells: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """The stage's per-cell calls (``cells.tsv`` columns) scored against the true position (a fraction
    of the cycle), phase and DNA content of the same (sample, barcode). With ``cells["rna_pc_angle"]``
    the baseline's agreement with the true position is ``position_agreement_rna_pc_angle`` (same
    function, same cells as ``position_agreement``)."""
    m = _merge_truth(cells, truth)
    ok = m["true_position"].notna().to_numpy()
    out: dict = {"n_matched": int(ok.sum())}
    if not ok.any():
        return out
    m = m[ok]
    tp = m["true_position"].to_numpy(float) * TWO_PI
    tph = truth_phase(m["true_phase"])
    out["position_circular_correlation"] = circular_correlation(m["cycle_position"], tp)
    out["position_circular_correlation_fl"] = circular_correlation_fl(m["cycle_position"], tp)
    out["position_agreement"] = circular_agreement(m["cycle_position"], tp)
    if BASELINE in m:
        out[f"position_agreement_{BASELINE}"] = circular_agreement(m[BASELINE], tp)
    nonG1 = tph != "G1"
    out["position_circular_correlation_S_G2M"] = circular_correlation(m["cycle_position"][nonG1], tp[nonG1])
    out["rna_phase_tirosh"] = phase_agreement(tph, m["phase"])
    out["rna_phase_position"] = phase_agreement(tph, m["phase_position"])
    if "phase_dna" in m:
        out["dna_phase"] = phase_agreement(tph, m["phase_dna"])
        if "true_dna_content" in m:
            ok2 = m["dna_n"].notna() & m["true_dna_content"].notna()
            out["dna_n_vs_true_dna_content_pearson"] = float(np.corrcoef(m.loc[ok2, "dna_n"],
                                                                         m.loc[ok2, "true_dna_content"])[0, 1])
    for c in [c for c in m.columns if c.startswith("phase_morph_")]:
        out[c] = phase_agreement(tph, m[c])
    if "phase_dna_generated" in m:
        sel = m["phase_dna_generated"].notna().to_numpy()
        out["generated_dna_phase"] = phase_agreement(tph[sel], m["phase_dna_generated"].to_numpy()[sel])
    return out

