"""Oracle ceilings: the fraction of each gene's and feature's variance the true shared state explains.

Monte Carlo estimates of ``1 - E[Var(y | shared)] / Var(y)``: the shared state is kept and the
private variation redrawn, in the spaces later stages score in (log-normalised expression and
region-property features measured on the true masks).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .expression import log_normalise, sample_counts
from .render import CHANNEL_NAMES, form_image, render_nucleus
from .states import TYPE_MORPHOLOGY


def redraw_rna_private(states: pd.DataFrame, rng: np.random.Generator,
                       library_median: float) -> pd.DataFrame:
    """Keep the shared state, redraw everything RNA-private (incl. resistance of untreated cells)."""
    out = states.copy()
    n = len(out)
    for k in (1, 2, 3):
        out[f"z_rna_{k}"] = rng.standard_normal(n)
    out["mito_load"] = 0.3 * rng.standard_normal(n)
    out["library_size"] = library_median * np.exp(0.35 * rng.standard_normal(n))
    untreated = (out["treatment"] == "control").to_numpy()
    p_res = out["cell_type"].map(lambda t: TYPE_MORPHOLOGY[t]["p_resistant"]).to_numpy()
    redrawn = rng.random(n) < p_res
    out["resistant"] = np.where(untreated, redrawn, out["resistant"].to_numpy())
    return out


def explained_fraction(replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: 1 - E[Var(y | state)] / Var(y) from replicates shaped (K, cells, columns).

    Returns the fraction and the total variance (the weight for variance-weighted totals).
    """
    k = replicates.shape[0]
    within = replicates.var(axis=0, ddof=1).mean(axis=0)
    total = replicates.reshape(k * replicates.shape[1], -1).var(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, 1.0 - within / total, np.nan)
    return frac, total


def rna_oracle(states, genes, rng, replicates: int,
               library_median: float) -> tuple[np.ndarray, np.ndarray]:
    reps = np.stack([
        log_normalise(sample_counts(redraw_rna_private(states, rng, library_median), genes, rng))
        for _ in range(replicates)
    ]).astype(np.float32)
    return explained_fraction(reps)


def morphology_oracle(states, rng, replicates: int, measure) -> pd.DataFrame:
    """Ceiling per region-property feature, measured on the true masks of re-rendered nuclei.

    Every replicate keeps the shared state and redraws the morphology-private parts (shape
    details, texture pattern, staining, optics). ``measure(labels, image_cyx) -> DataFrame``
    is the workflow's own feature extractor.
    """
    per_rep = []
    for _ in range(replicates):
        private = states.copy()
        private["z_elongation"] = rng.standard_normal(len(states))
        private["size_noise"] = np.exp(0.1 * rng.standard_normal(len(states)))
        private["stain_efficiency"] = np.exp(0.08 * rng.standard_normal(len(states)))
        per_rep.append(measure_isolated(private, rng, measure))
    features = [c for c in per_rep[0].columns if c.startswith("morph_")]
    stacked = np.stack([r[features].to_numpy(float) for r in per_rep])
    frac, total = explained_fraction(stacked)
    return pd.DataFrame({"feature": features, "oracle_r2": frac, "variance": total})


def measure_isolated(states, rng, measure, per_canvas: int = 400, cell: int = 112) -> pd.DataFrame:
    """Render nuclei on a spaced grid (no neighbours) and measure them with the true masks."""
    tables = []
    for start in range(0, len(states), per_canvas):
        chunk = states.iloc[start:start + per_canvas]
        side = math.ceil(math.sqrt(len(chunk)))
        size = side * cell
        labels = np.zeros((size, size), np.int32)
        dna = np.zeros((size, size), np.float32)
        cyto = np.zeros((size, size), np.float32)
        for i, (_, row) in enumerate(chunk.iterrows()):
            nuc = render_nucleus(row, rng)
            h, w = nuc.mask.shape
            h, w = min(h, cell), min(w, cell)
            top = (i // side) * cell + (cell - h) // 2
            left = (i % side) * cell + (cell - w) // 2
            labels[top:top + h, left:left + w][nuc.mask[:h, :w]] = i + 1
            dna[top:top + h, left:left + w] += nuc.density[:h, :w]
            cyto[top:top + h, left:left + w] += nuc.cytoplasm[:h, :w]
        image = form_image(dna, cyto, rng, blur_sigma=float(rng.uniform(1.0, 1.8)))
        table = measure(labels, image).sort_values("label")
        if len(table) != len(chunk):
            raise RuntimeError("oracle measurement lost nuclei")
        tables.append(table.reset_index(drop=True))
    return pd.concat(tables, ignore_index=True)


def workflow_measure(labels: np.ndarray, image_cyx: np.ndarray) -> pd.DataFrame:
    """Measure with the workflow's own nuclei feature extractor (cosmic.nuclei)."""
    from ..imageio import ImageData
    from ..nuclei import measure_nuclei

    image = ImageData(pixels=image_cyx.astype(np.float32), channel_names=list(CHANNEL_NAMES),
                      dna_index=0, path="<demo oracle>")
    return measure_nuclei(labels, image, image_name="oracle", sample="oracle")


def oracle_ceilings(truth: pd.DataFrame, genes: pd.DataFrame, seed: int, replicates: int,
                    library_median: float, measure) -> tuple[pd.DataFrame, dict]:
    """Oracle ceilings of the captured cells of ``truth``: per gene, per feature, and in total.

    Adds ``oracle_r2`` and ``oracle_variance`` to ``genes``; returns the per-feature table of
    :func:`morphology_oracle` and the totals written to ``oracle.json``. Draws from its own
    generator (``[seed, 1]``), so the data files do not depend on the number of replicates.
    """
    rng_oracle = np.random.default_rng([seed, 1])
    captured = truth[truth["captured"]].reset_index(drop=True)
    gene_r2, gene_var = rna_oracle(captured, genes, rng_oracle, replicates, library_median)
    genes["oracle_r2"] = gene_r2
    genes["oracle_variance"] = gene_var
    morph = morphology_oracle(captured, rng_oracle, replicates, measure)
    finite = np.isfinite(gene_r2) & (gene_var > 0)
    summary = {
        "definition": "fraction of variance explained by the true shared state, 1 - E[Var(y|shared)]/Var(y), "
                      "Monte Carlo over private variation; expression in log1p(normalize_total 1e4) space, "
                      "morphology as region-property features on the true masks",
        "replicates": replicates,
        "rna_total_oracle_r2": float(np.sum(gene_r2[finite] * gene_var[finite]) / np.sum(gene_var[finite])),
        "morphology_total_oracle_r2_standardised": float(np.nanmean(morph["oracle_r2"])),
        "n_cells": int(truth["captured"].sum()),
        "n_nuclei": int(len(truth)),
        "n_genes": int(len(genes)),
    }
    return morph, summary
