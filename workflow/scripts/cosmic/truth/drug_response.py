"""Drug response: recovery of the demo's planted genes and nuclear changes.

The demo plants ``resistance`` genes (up in resistant cells), ``drug_response`` genes (up in
responsive treated cells), ``treatment`` genes (treated vs control) and the morphology shifts
of :data:`DEMO_MORPHOLOGY_SHIFTS`; :func:`demo_recovery` says how many of them the drug-response
analysis found.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import CosmicInputError

if TYPE_CHECKING:
    from ..drug_response import Comparison, DrugResponseParams

# Planted morphology shifts of the demo, per trait of results/demo/morphology_traits.tsv: region-property
# feature and the sign of its shift in drug-affected cells (treated; within treated, responsive).
DEMO_MORPHOLOGY_SHIFTS = {
    "nuclear_area": (("morph_area", 1),),
    "dna_content": (("morph_dna_integrated", 1),),
    "lobulation_and_micronuclei": (("morph_solidity", -1), ("morph_form_factor", -1)),
}


def _average_precision(table: pd.DataFrame, planted: set, ranking: np.ndarray) -> float | None:
    """Average precision of the planted genes when all tested genes are ranked by ``ranking`` (high first)."""
    from sklearn.metrics import average_precision_score

    y = table["gene"].isin(planted).to_numpy()
    return float(average_precision_score(y, ranking)) if y.any() else None


def _precision_recall(found: set, planted: set) -> dict:
    hit = found & planted
    return dict(precision=len(hit) / len(found) if found else None, recall=len(hit) / len(planted) if planted else None,
                n_found=len(found), n_planted=len(planted), n_hit=len(hit))


def _read_gene_table(truth_dir: Path) -> pd.DataFrame:
    """The demo's ``genes.tsv`` (columns ``gene`` and ``program`` at least)."""
    path = truth_dir / "genes.tsv"
    if not path.exists():
        raise CosmicInputError(f"drug_response: demo truth file '{path}' does not exist; pass the demo directory "
                               "(results/demo) or no truth")
    genes = pd.read_csv(path, sep="\t")
    if not {"gene", "program"} <= set(genes.columns):
        raise CosmicInputError(f"drug_response: file '{path}' needs columns 'gene' and 'program'")
    return genes


def _planted(table: pd.DataFrame, program: Mapping[str, str], programs: set) -> set:
    """Genes of ``table`` planted by one of ``programs`` (``program``: gene -> its program)."""
    return {g for g in table["gene"] if program.get(g) in programs}


def _by_program(table: pd.DataFrame, program: Mapping[str, str]) -> dict:
    """How many genes of ``table`` each program drives."""
    return {str(p): int(n) for p, n in pd.Series([program.get(g, "unknown") for g in table["gene"]],
                                                 dtype=object).value_counts().items()}


def _response_gene_recovery(t: pd.DataFrame, program: Mapping[str, str], k: int) -> tuple[dict, dict]:
    """Resistance genes up in resistant cells and drug-response genes up in responsive ones."""
    sig = t[t["significant"]]
    res, resp = _planted(t, program, {"resistance"}), _planted(t, program, {"drug_response"})
    up, down = sig[sig["score"] > 0], sig[sig["score"] < 0]
    top_up = t.nlargest(k, "score")
    top_down = t.nsmallest(k, "score")
    resistance = dict(
        significant=_precision_recall(set(sig["gene"]), res),
        significant_up_in_resistant=_precision_recall(set(up["gene"]), res),
        top_k_up_in_resistant=_precision_recall(set(top_up["gene"]), res),
        average_precision_by_z=_average_precision(t, res, t["score"].to_numpy(float)),
        missed=sorted(res - set(up["gene"])),
        significant_by_program=_by_program(sig, program),
    )
    responsive = dict(
        significant_down_in_resistant=_precision_recall(set(down["gene"]), resp),
        top_k_down_in_resistant=_precision_recall(set(top_down["gene"]), resp),
        average_precision_by_z=_average_precision(t, resp, -t["score"].to_numpy(float)),
        missed=sorted(resp - set(down["gene"])),
    )
    return resistance, responsive


def _treatment_gene_recovery(t: pd.DataFrame, program: Mapping[str, str], genes: pd.DataFrame, k: int) -> dict:
    """Treatment and drug-response genes between treated and control cells."""
    sig = t[t["significant"]]
    planted_t = _planted(t, program, {"treatment", "drug_response"})
    top = t.reindex(t["score"].abs().sort_values(ascending=False).index[:k])
    lfc = dict(zip(genes["gene"].astype(str), genes.get("treatment_lfc", pd.Series(np.nan, index=genes.index))))
    return dict(
        planted_programs=["treatment", "drug_response"],
        significant=_precision_recall(set(sig["gene"]), planted_t),
        top_k=_precision_recall(set(top["gene"]), planted_t),
        average_precision_by_abs_z=_average_precision(t, planted_t, t["score"].abs().to_numpy(float)),
        treatment_program_only=_precision_recall(set(sig["gene"]), _planted(t, program, {"treatment"})),
        missed={g: round(float(lfc.get(g, np.nan)), 3) for g in sorted(planted_t - set(sig["gene"]))},
        significant_by_program=_by_program(sig, program),
    )


def _morphology_shift_recovery(truth_dir: Path, morph: pd.DataFrame, comps: Mapping[str, Comparison],
                               fdr: float) -> dict:
    """Each planted shift is recovered when its feature has q < fdr and Cohen's d of the expected sign."""
    traits = set(DEMO_MORPHOLOGY_SHIFTS)
    traits_path = truth_dir / "morphology_traits.tsv"
    if traits_path.exists():
        listed = set(pd.read_csv(traits_path, sep="\t")["trait"].astype(str))
        traits &= listed
    shifts = []
    for comp in comps.values():
        # the affected cells are the group of `treatment` (treated) and the reference of `response` (responsive)
        flip = 1 if comp.name == "treatment" else -1
        for trait in sorted(traits):
            for feature, sign in DEMO_MORPHOLOGY_SHIFTS[trait]:
                row = dict(comparison=comp.name, trait=trait, feature=feature,
                           expected=f"{'higher' if sign * flip > 0 else 'lower'} in {comp.group}")
                hit = morph[(morph["comparison"] == comp.name) & (morph["feature"] == feature)]
                if comp.skipped or hit.empty or not np.isfinite(hit["qval"].iloc[0]):
                    row.update(recovered=None, note=comp.skipped or "feature not measured")
                else:
                    d, q = float(hit["cohens_d"].iloc[0]), float(hit["qval"].iloc[0])
                    row.update(cohens_d=d, qval=q, recovered=bool(q < fdr and np.sign(d) == sign * flip))
                shifts.append(row)
    scored = [s for s in shifts if s["recovered"] is not None]
    return dict(recovered=sum(s["recovered"] for s in scored), scored=len(scored), shifts=shifts)


def demo_recovery(truth_dir, de: Mapping[str, pd.DataFrame], morph: pd.DataFrame,
                  comps: Mapping[str, Comparison], params: DrugResponseParams) -> dict:
    """Score the planted genes and morphology shifts of the demo (``results/demo``).

    Genes (``genes.tsv``, program): ``resistance`` genes must be significantly up in resistant
    cells, ``drug_response`` genes up in responsive ones; ``treatment`` and ``drug_response``
    genes are planted between treated and control cells. Precision/recall are over genes that
    were tested; ``top_k`` uses the ``top_n`` genes with the largest Wilcoxon z in the expected
    direction. ``significant_by_program`` shows where the other significant genes come from (cell-
    cycle genes move with the drug's mitotic arrest: biology, not noise). Morphology: each planted
    shift (:data:`DEMO_MORPHOLOGY_SHIFTS`) is recovered when its feature has q < fdr and Cohen's d of
    the expected sign.
    """
    truth_dir = Path(truth_dir)
    genes = _read_gene_table(truth_dir)
    program = dict(zip(genes["gene"].astype(str), genes["program"].astype(str)))
    k = params.top_n
    out: dict[str, Any] = {"fdr": params.fdr, "top_k": k}

    t = de.get("response")
    if comps["response"].skipped or t is None or not len(t):
        out["resistance_genes"] = {"skipped": comps["response"].skipped}
    else:
        out["resistance_genes"], out["drug_response_genes_in_responsive"] = _response_gene_recovery(t, program, k)
    t = de.get("treatment")
    if comps["treatment"].skipped or t is None or not len(t):
        out["treatment_genes"] = {"skipped": comps["treatment"].skipped}
    else:
        out["treatment_genes"] = _treatment_gene_recovery(t, program, genes, k)
    out["morphology_shifts"] = _morphology_shift_recovery(truth_dir, morph, comps, params.fdr)
    return out
