"""Transcriptome: the gene table (which program drives each gene), expression and UMI counts."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from ..atomic import atomic_path
from .states import CELL_TYPES

RESOURCES = Path(__file__).resolve().parents[4] / "resources"

TYPE_MARKERS = {
    "luminal": ["KRT8", "KRT18", "AR", "KLK3", "KLK2", "NKX3-1", "TMPRSS2", "FOLH1", "HOXB13",
                "AMACR", "ACPP", "MSMB", "STEAP2", "SPDEF", "FOXA1"],
    "basal": ["KRT5", "KRT14", "TP63", "KRT15", "KRT17", "ITGA6", "CAV1", "LAMB3", "COL17A1",
              "EGFR", "KRT6A", "SERPINB5", "DKK1", "CDH3", "SOX9"],
    "neuroendocrine": ["CHGA", "SYP", "ENO2", "NCAM1", "ASCL1", "INSM1", "SOX2", "CHGB", "SCG2",
                       "SCG3", "NEUROD1", "STMN2", "TUBB2B", "DLL3", "PCSK1"],
}
RESISTANCE_GENES = ["ABCB1", "NUPR1", "ABCC1", "ABCG2", "GSTP1", "TUBB3", "ALDH1A1", "CLU",
                    "BCL2L1", "AKR1C3"]
# p53/stress response of docetaxel-responsive cells.
RESPONSE_GENES = ["CDKN1A", "GADD45A", "MDM2", "BAX", "FAS", "TP53I3", "BTG2", "SESN1"]
MITO_GENES = ["MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3", "MT-ND3",
              "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB"]


def _read_list(path: Path) -> list[str]:
    return [g.strip() for g in path.read_text().splitlines() if g.strip()]


def build_gene_table(rng: np.random.Generator) -> pd.DataFrame:
    """One row per gene: which program drives it, how strongly, and whether it is shared."""
    s_genes = _read_list(RESOURCES / "cell_cycle" / "tirosh2016_s_genes_human.txt")
    g2m_genes = _read_list(RESOURCES / "cell_cycle" / "tirosh2016_g2m_genes_human.txt")
    special = {g: "cell_cycle_S" for g in s_genes}
    special.update({g: "cell_cycle_G2M" for g in g2m_genes})
    for cell_type, markers in TYPE_MARKERS.items():
        special.update({g: f"marker_{cell_type}" for g in markers})
    special.update({g: "resistance" for g in RESISTANCE_GENES})
    special.update({g: "drug_response" for g in RESPONSE_GENES})
    special.update({g: "mitochondrial" for g in MITO_GENES})
    background = [g for g in _read_list(RESOURCES / "genes" / "human_background_genes.txt")
                  if g not in special]
    genes = list(special) + background
    n = len(genes)
    program = np.array([special.get(g, "background") for g in genes], dtype=object)
    bg_idx = np.flatnonzero(program == "background")
    chosen = rng.permutation(bg_idx)
    program[chosen[:40]] = "shared_chromatin"
    program[chosen[40:120]] = "rna_private"
    program[chosen[120:140]] = "treatment"

    base = rng.normal(-8.0, 1.3, n)
    base[program == "mitochondrial"] = rng.normal(-5.5, 0.4, (program == "mitochondrial").sum())
    base[program == "resistance"] -= 1.5
    type_effect = np.zeros((n, len(CELL_TYPES)))
    # A share of the remaining background genes differs mildly between cell types.
    still_background = np.flatnonzero(program == "background")
    typed = rng.permutation(still_background)[: int(0.15 * bg_idx.size)]
    type_effect[typed] = rng.normal(0, 0.5, (typed.size, len(CELL_TYPES)))
    for t, cell_type in enumerate(CELL_TYPES):
        is_marker = program == f"marker_{cell_type}"
        type_effect[is_marker, t] = rng.uniform(2.0, 3.5, is_marker.sum())
        base[is_marker] -= 1.0
    amp = rng.uniform(1.0, 2.2, n)
    table = pd.DataFrame({
        "gene": genes,
        "gene_id": [f"DEMO{i:06d}" for i in range(n)],
        "program": program,
        "base_log_weight": base,
        **{f"type_effect_{c}": type_effect[:, t] for t, c in enumerate(CELL_TYPES)},
        "s_amplitude": np.where(program == "cell_cycle_S", amp, 0.0),
        "g2m_amplitude": np.where(program == "cell_cycle_G2M", amp, 0.0),
        "resistance_lfc": np.where(program == "resistance", rng.uniform(1.5, 2.5, n), 0.0),
        "response_lfc": np.where(program == "drug_response", rng.uniform(1.0, 2.0, n), 0.0),
        "treatment_lfc": np.where(program == "treatment", rng.normal(0, 0.6, n), 0.0),
        "shared_loading": np.where(program == "shared_chromatin", rng.normal(0, 0.6, n), 0.0),
        **{f"private_loading_{k}": np.where(program == "rna_private", rng.normal(0, 0.6, n), 0.0)
           for k in (1, 2, 3)},
        "mito_loading": (program == "mitochondrial").astype(float),
        "nb_size": np.exp(rng.normal(np.log(4.0), 0.3, n)),
    })
    shared_programs = {"cell_cycle_S", "cell_cycle_G2M", "marker_luminal", "marker_basal",
                       "marker_neuroendocrine", "drug_response", "treatment", "shared_chromatin"}
    table["driven_by_shared_state"] = table["program"].isin(shared_programs) | (
        np.abs(type_effect).sum(1) > 0) | (table["program"] == "resistance")
    return table


def _circular_bump(position, centre, width):
    d = np.abs(np.asarray(position) - centre)
    d = np.minimum(d, 1.0 - d)
    return np.exp(-0.5 * (d / width) ** 2)


def expression_log_weights(states: pd.DataFrame, genes: pd.DataFrame) -> np.ndarray:
    """Unnormalised log expression weight per cell x gene from the cells' latent states."""
    type_idx = pd.Categorical(states["cell_type"], categories=CELL_TYPES).codes
    type_effect = genes[[f"type_effect_{c}" for c in CELL_TYPES]].to_numpy()
    treated = (states["treatment"] != "control").to_numpy()
    resistant = states["resistant"].to_numpy()
    s_bump = _circular_bump(states["cycle_position"], 0.65, 0.1)
    g2m_bump = _circular_bump(states["cycle_position"], 0.93, 0.06)
    private = states[["z_rna_1", "z_rna_2", "z_rna_3"]].to_numpy()
    loadings = genes[["private_loading_1", "private_loading_2", "private_loading_3"]].to_numpy()
    return (
        genes["base_log_weight"].to_numpy()[None, :]
        + type_effect[:, type_idx].T
        + s_bump[:, None] * genes["s_amplitude"].to_numpy()[None, :]
        + g2m_bump[:, None] * genes["g2m_amplitude"].to_numpy()[None, :]
        + resistant[:, None] * genes["resistance_lfc"].to_numpy()[None, :]
        + (treated & ~resistant)[:, None] * genes["response_lfc"].to_numpy()[None, :]
        + treated[:, None] * genes["treatment_lfc"].to_numpy()[None, :]
        + states["z_shared"].to_numpy()[:, None] * genes["shared_loading"].to_numpy()[None, :]
        + private @ loadings.T
        + states["mito_load"].to_numpy()[:, None] * genes["mito_loading"].to_numpy()[None, :]
    )


def sample_counts(states: pd.DataFrame, genes: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Negative-binomial (gamma-Poisson) UMI counts, cells x genes, int32."""
    logw = expression_log_weights(states, genes)
    logw -= logw.max(axis=1, keepdims=True)
    proportions = np.exp(logw)
    proportions /= proportions.sum(axis=1, keepdims=True)
    mean = proportions * states["library_size"].to_numpy()[:, None]
    size = genes["nb_size"].to_numpy()[None, :]
    rate = rng.gamma(size, mean / size)
    return rng.poisson(rate).astype(np.int32)


def log_normalise(counts: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """The expression space later stages score in (scanpy normalize_total + log1p)."""
    totals = counts.sum(axis=1, keepdims=True).astype(float)
    return np.log1p(counts / np.maximum(totals, 1.0) * target_sum)


def write_10x_mtx(folder, counts: np.ndarray, barcodes, genes: pd.DataFrame) -> None:
    """Write a Cell Ranger v3-style matrix folder (genes x cells, gzipped)."""
    with atomic_path(folder, suffix="") as tmp:
        tmp.mkdir()
        # mtime=0: byte-identical archives for the same seed.
        with gzip.GzipFile(tmp / "matrix.mtx.gz", "wb", mtime=0) as fh:
            scipy.io.mmwrite(fh, sp.coo_matrix(counts.T), field="integer")
        with gzip.GzipFile(tmp / "barcodes.tsv.gz", "wb", mtime=0) as fh:
            fh.write(("\n".join(barcodes) + "\n").encode())
        with gzip.GzipFile(tmp / "features.tsv.gz", "wb", mtime=0) as fh:
            fh.write("".join(f"{gid}\t{name}\tGene Expression\n"
                             for gid, name in zip(genes["gene_id"], genes["gene"])).encode())


def random_barcodes(rng: np.random.Generator, n: int) -> list[str]:
    out: set[str] = set()
    letters = np.array(list("ACGT"))
    while len(out) < n:
        out.update("".join(s) + "-1" for s in letters[rng.integers(0, 4, (n - len(out), 16))])
    # Sort first: a set of strings iterates in a per-process hash order (PYTHONHASHSEED).
    return sorted(sorted(out), key=lambda _: rng.random())
