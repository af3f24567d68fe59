"""The ``cosmic.evaluation:`` config block: how many repeated splits, how many generated samples."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class EvaluationParams:
    """Repeated held-out evaluation (see :mod:`cosmic.evaluation.summary`)."""

    n_splits: int = 5  # independent train/val/test splits (seeds seed, seed + 1, ...); the first is the `cosmic` rule's
    n_generated: int = 4  # generated samples per test cell scored by the generation metrics
    max_cells: int = 2000  # generation metrics compare at most this many real and generated cells (seeded subsample)

    def __post_init__(self):
        from ..config import check_against_schema

        check_against_schema(self, "cosmic.evaluation")

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None) -> "EvaluationParams":
        from ..config import params_from_config

        return params_from_config(cls, "cosmic.evaluation", mapping)

    def split_seeds(self, seed: int) -> list[int]:
        """The split (and training) seed of every split: ``seed + i``."""
        return [int(seed) + i for i in range(self.n_splits)]
