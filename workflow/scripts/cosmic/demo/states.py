"""Latent state of every nucleus: the shared part (drives both modalities) and the private parts."""

from __future__ import annotations

import numpy as np
import pandas as pd

CELL_TYPES = ("luminal", "basal", "neuroendocrine")
# Phase boundaries on the cycle position in [0, 1).
PHASE_BOUNDS = (("G1", 0.0, 0.5), ("S", 0.5, 0.8), ("G2", 0.8, 0.95), ("M", 0.95, 1.0))

# Per cell type: nuclear area (px, early G1), aspect ratio, chromatin grain (px), texture contrast,
# and the probability of being intrinsically resistant.
TYPE_MORPHOLOGY = {
    "luminal": dict(area=420.0, aspect=1.25, grain=2.0, contrast=0.25, p_resistant=0.25),
    "basal": dict(area=560.0, aspect=1.6, grain=3.5, contrast=0.35, p_resistant=0.5),
    "neuroendocrine": dict(area=300.0, aspect=1.08, grain=1.2, contrast=0.5, p_resistant=0.4),
}
TYPE_PROPORTIONS = (0.5, 0.3, 0.2)


def phase_of(position) -> np.ndarray:
    position = np.asarray(position)
    out = np.empty(position.shape, dtype=object)
    for name, lo, hi in PHASE_BOUNDS:
        out[(position >= lo) & (position < hi)] = name
    return out


def dna_content(position, polyploid) -> np.ndarray:
    """DNA content in N: 2N in G1, linear rise through S, 4N in G2/M; doubled when polyploid."""
    s_progress = np.clip((np.asarray(position) - 0.5) / 0.3, 0.0, 1.0)
    return (2.0 + 2.0 * s_progress) * np.where(polyploid, 2.0, 1.0)



def draw_cell_states(rng: np.random.Generator, sample: str, treatment: str, n: int,
                     library_median: float = 5000.0) -> pd.DataFrame:
    """Draw the latent state of ``n`` nuclei of one sample (shared and private parts)."""
    cell_type = rng.choice(len(CELL_TYPES), size=n, p=TYPE_PROPORTIONS)
    p_res = np.array([TYPE_MORPHOLOGY[CELL_TYPES[t]]["p_resistant"] for t in cell_type])
    resistant = rng.random(n) < p_res
    # Age distribution of an exponentially growing population: density ~ 2^-position.
    position = -np.log2(1.0 - rng.random(n) / 2.0)
    treated = treatment != "control"
    responsive_treated = treated & ~resistant
    arrested = responsive_treated & (rng.random(n) < 0.35)
    position = np.where(arrested, 0.95 + 0.05 * rng.random(n), position)
    polyploid = responsive_treated & ~arrested & (rng.random(n) < 0.3)
    return pd.DataFrame({
        "sample": sample,
        "treatment": treatment,
        "cell_type": np.array(CELL_TYPES)[cell_type],
        "cycle_position": position,
        "phase": phase_of(position),
        "resistant": resistant,
        "response": np.where(resistant, "resistant", "responsive"),
        "mitotic_arrest": arrested,
        "polyploid": polyploid,
        "dna_content": dna_content(position, polyploid),
        "z_shared": rng.standard_normal(n),
        # morphology-private
        "z_elongation": rng.standard_normal(n),
        "size_noise": np.exp(0.1 * rng.standard_normal(n)),
        "stain_efficiency": np.exp(0.08 * rng.standard_normal(n)),
        # RNA-private
        "z_rna_1": rng.standard_normal(n),
        "z_rna_2": rng.standard_normal(n),
        "z_rna_3": rng.standard_normal(n),
        "mito_load": 0.3 * rng.standard_normal(n),
        "library_size": library_median * np.exp(0.35 * rng.standard_normal(n)),
    })



def morphology_traits() -> pd.DataFrame:
    """Which nuclear traits the shared state drives and which are private to morphology."""
    rows = [
        ("nuclear_area", "cell type, cycle position (G1 growth, DNA content), z_shared, drug response, mitosis", True),
        ("dna_content", "cycle position (2N->4N through S), polyploidy after mitotic slippage", True),
        ("chromatin_texture_grain", "cell type, mitosis", True),
        ("chromatin_texture_contrast", "cell type, z_shared, mitosis", True),
        ("lobulation_and_micronuclei", "drug response (treated, responsive cells)", True),
        ("aspect_ratio", "cell type (mean) and z_elongation (private)", True),
        ("size_noise", "private nuclear size variation (x exp(0.1 N(0,1)))", False),
        ("orientation", "private", False),
        ("boundary_irregularity", "private (higher in mitosis)", False),
        ("texture_pattern", "private random field", False),
        ("staining_efficiency", "private", False),
        ("optics_blur_background_noise", "private, per field of view", False),
    ]
    return pd.DataFrame(rows, columns=["trait", "driven_by", "shared"])
