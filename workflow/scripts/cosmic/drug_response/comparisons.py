"""The two comparisons: treated vs control cells, and resistant vs responsive treated cells."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .params import MIN_CELLS, DrugResponseParams

log = logging.getLogger(__name__)

COMPARISONS = ("treatment", "response")
COMPARISON_TITLES = {"treatment": "treated vs control (all cells)",
                     "response": "resistant vs responsive (treated cells)"}


@dataclass
class Comparison:
    """Cells of one comparison: ``cells`` selects them from the cohort, ``is_group`` splits them."""

    name: str
    title: str
    group: str  # label of the tested group (positive class, numerator of fold changes)
    reference: str
    cells: np.ndarray | None = None  # bool over cohort cells
    is_group: np.ndarray | None = None  # bool over the selected cells
    skipped: str | None = None
    n_group: int = 0
    n_reference: int = 0
    group_samples: list | None = None
    reference_samples: list | None = None
    wilcoxon_cells: dict | None = None  # cells of each group in the rank-sum test, when a subset

    def describe(self) -> dict:
        out = dict(title=self.title, group=self.group, reference=self.reference, n_group=self.n_group,
                   n_reference=self.n_reference, skipped=self.skipped)
        if self.wilcoxon_cells is not None:
            out["wilcoxon_cells"] = self.wilcoxon_cells
        if self.skipped is None and self.group_samples is not None:
            out.update(group_samples=self.group_samples, reference_samples=self.reference_samples)
            shared = set(self.group_samples) & set(self.reference_samples)
            out["confounded_with_sample"] = not shared
            if not shared:
                out["note"] = ("no sample holds cells of both groups: differences include sample/batch effects "
                               "as well as the biology")
        return out


def _levels(values: pd.Series) -> dict:
    counts = values.astype(object).where(values.notna(), "<missing>").value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def define_comparisons(obs: pd.DataFrame, params: DrugResponseParams) -> dict[str, Comparison]:
    """The ``treatment`` and ``response`` comparisons; those lacking groups carry ``skipped``."""
    samples = obs["sample"].astype(str).to_numpy() if "sample" in obs else None
    out = {}

    def finish(comp: Comparison, cells: np.ndarray, is_group_all: np.ndarray, why_empty: str) -> Comparison:
        comp.n_group, comp.n_reference = int((cells & is_group_all).sum()), int((cells & ~is_group_all).sum())
        if min(comp.n_group, comp.n_reference) < MIN_CELLS:
            comp.skipped = (f"{comp.n_group} {comp.group} and {comp.n_reference} {comp.reference} cells "
                            f"(need >= {MIN_CELLS} each); {why_empty}")
            return comp
        comp.cells, comp.is_group = cells, is_group_all[cells]
        if samples is not None:
            comp.group_samples = sorted(set(samples[cells & is_group_all]))
            comp.reference_samples = sorted(set(samples[cells & ~is_group_all]))
        return comp

    if params.treatment_key not in obs.columns:
        # A cohort without a treatment column (e.g. untreated cells only): nothing to compare there;
        # a per-cell response, if any, is compared across all cells.
        comp = Comparison("treatment", COMPARISON_TITLES["treatment"], "treated", params.control)
        comp.skipped = (f"the cohort has no obs column '{params.treatment_key}' (drug_response.treatment_key); "
                        "add a 'treatment' column to the sample sheet or set the key to an obs column")
        out["treatment"] = comp
        is_treated = np.ones(len(obs), dtype=bool)
    else:
        treatment = obs[params.treatment_key]
        known = treatment.notna().to_numpy()
        is_control = known & (treatment.astype(str) == params.control).to_numpy()
        is_treated = known & ~is_control
        treated_levels = sorted(set(treatment[is_treated].astype(str)))
        group = treated_levels[0] if len(treated_levels) == 1 else "treated"
        out["treatment"] = finish(
            Comparison("treatment", COMPARISON_TITLES["treatment"], group, params.control), known, is_treated,
            f"obs['{params.treatment_key}'] levels: {_levels(treatment)}; set drug_response.control to the "
            "untreated level")

    comp = Comparison("response", COMPARISON_TITLES["response"], params.resistant, params.responsive)
    if params.response_key not in obs.columns:
        columns = list(map(str, obs.columns))
        comp.skipped = (f"the cohort has no obs column '{params.response_key}' (drug_response.response_key); "
                        f"obs columns: {columns[:8]}{' ...' if len(columns) > 8 else ''}; a per-cell "
                        "response comes from the sample sheet's 'annotations' table")
        out["response"] = comp
    else:
        response = obs[params.response_key].astype(object)
        labels = response.where(response.notna(), None).astype(str).to_numpy()
        in_pair = np.isin(labels, [params.resistant, params.responsive])
        out["response"] = finish(
            comp, is_treated & in_pair, labels == params.resistant,
            f"obs['{params.response_key}'] levels among treated cells: {_levels(response[is_treated])}; a per-cell "
            f"'{params.resistant}'/'{params.responsive}' label is needed (a sample-level label such as 'mixed' "
            "cannot be compared)")
    for comp in out.values():
        if comp.skipped:
            log.warning("drug_response: comparison '%s' skipped: %s", comp.name, comp.skipped)
    return out
