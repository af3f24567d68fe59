"""The ``cell_cycle:`` config block (:class:`CellCycleParams`) and the constants shared by the package."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import CosmicInputError
from ..layout import CELL_CYCLE_FIGURES

RESOURCES = Path(__file__).resolve().parents[4] / "resources" / "cell_cycle"
PHASES = ("G1", "S", "G2M")
ORGANISMS = ("auto", "human", "mouse")
POSITION_METHODS = ("pca", "score_plane")
TWO_PI = 2.0 * math.pi
G2M_ANCHOR = 0.9 * TWO_PI  # the G2/M programme peaks here: position 0 is close to division
DNA_FEATURE = "morph_dna_integrated"
AREA_FEATURE = "morph_area"
FIGURES = CELL_CYCLE_FIGURES  # figures/<name>.png (+ .txt caption), as the rule declares them
PHASE_COLORS = {"G1": "#4C72B0", "S": "#DD8452", "G2M": "#55A868"}


@dataclass
class CellCycleParams:
    """The ``cell_cycle:`` config block."""

    seed: int = 0  # scanpy control genes, mixtures, cross-validation folds
    organism: str = "auto"  # "human" | "mouse" | "auto" (the list with more genes present)
    n_position_bins: int = 8  # bins of the position in along-cycle plots and the nuclei strip
    n_neighbors: int = 10  # neighbours averaged for the position (0 or 1: no smoothing)
    position_method: str = "pca"  # "pca" (default) | "score_plane" (angle of the median-centred Tirosh scores)
    min_genes: int = 3  # fewest genes of each list that must be present
    cv_folds: int = 5
    s_max_posterior: float = 0.9  # DNA content: between the peaks and less sure than this -> S
    reference_angle_key: str | None = None  # obs column of a measured cycle angle in radians (e.g. FUCCI theta)

    def __post_init__(self):
        if self.organism not in ORGANISMS:
            raise CosmicInputError(f"cell_cycle parameter organism must be one of {ORGANISMS}, got {self.organism!r}")
        if self.position_method not in POSITION_METHODS:
            raise CosmicInputError(f"cell_cycle parameter position_method must be one of {POSITION_METHODS}, "
                                   f"got {self.position_method!r}")
        for name, lo in (("seed", 0), ("n_position_bins", 2), ("n_neighbors", 0), ("min_genes", 1), ("cv_folds", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or not float(v).is_integer() \
                    or v < lo:
                raise CosmicInputError(f"cell_cycle parameter {name} must be an integer >= {lo}, got {v!r}")
            setattr(self, name, int(v))
        v = self.s_max_posterior
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0.5 <= v <= 1:
            raise CosmicInputError(f"cell_cycle parameter s_max_posterior must be a number in [0.5, 1], got {v!r}")
        self.s_max_posterior = float(v)

    @classmethod
    def from_config(cls, mapping: Mapping | None = None, **overrides) -> "CellCycleParams":
        """Build from ``config["cell_cycle"]``; unknown keys are errors naming the allowed ones."""
        from ..config import params_from_config

        return params_from_config(cls, "cell_cycle", mapping, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)
