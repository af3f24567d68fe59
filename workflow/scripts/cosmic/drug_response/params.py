"""The ``drug_response:`` config block and the smallest group a comparison may hold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import CosmicInputError

MIN_CELLS = 3  # cells per group for a comparison (and a morphology test) to run


@dataclass
class DrugResponseParams:
    """The ``drug_response:`` config block."""

    treatment_key: str = "treatment"  # obs column with the treatment of each cell
    control: str = "control"  # its value for untreated cells
    response_key: str = "response"  # obs column with the per-cell response
    resistant: str = "resistant"  # its value for resistant cells
    responsive: str = "responsive"  # its value for responsive cells
    fdr: float = 0.05  # Benjamini-Hochberg threshold for genes and morphology features
    seed: int = 0  # fold assignment of the classifiers
    cv_folds: int = 5  # stratified folds of the classifiers
    top_n: int = 20  # genes shown / scored as "top"
    max_de_cells: int = 20000  # cells per group in the Wilcoxon test (seeded subset of larger groups); 0: all

    def __post_init__(self):
        for name in ("treatment_key", "control", "response_key", "resistant", "responsive"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise CosmicInputError(f"config 'drug_response': {name} must be a non-empty string, got {value!r}")
        if self.resistant == self.responsive:
            raise CosmicInputError("config 'drug_response': resistant and responsive must be different labels, "
                                   f"both are {self.resistant!r}")
        if isinstance(self.fdr, bool) or not isinstance(self.fdr, (int, float)) or not 0 < self.fdr < 1:
            raise CosmicInputError(f"config 'drug_response': fdr must be a number between 0 and 1, got {self.fdr!r}")
        for name, lo in (("seed", 0), ("cv_folds", 2), ("top_n", 1), ("max_de_cells", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise CosmicInputError(f"config 'drug_response': {name} must be an integer >= {lo}, got {value!r}")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "DrugResponseParams":
        """Build from ``config["drug_response"]``; unknown keys are errors naming the allowed ones."""
        from ..config import params_from_config

        return params_from_config(cls, "drug_response", mapping, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)
