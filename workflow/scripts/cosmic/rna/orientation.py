"""Which axis of a counts table holds genes and which holds barcodes, told from their labels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

_CELL_CYCLE_DIR = Path(__file__).resolve().parents[4] / "resources" / "cell_cycle"
# A few ubiquitous genes, in addition to the shipped Tirosh lists, as evidence that labels are genes.
_COMMON_GENES = frozenset(
    "ACTB GAPDH B2M MALAT1 EEF1A1 TPT1 RPLP0 RPL13A RPS18 FTL FTH1 TMSB4X UBC HSP90AB1 PPIA "
    "VIM MKI67 TOP2A NEAT1 XIST".split()
)
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_BARCODE_RE = re.compile(r"[ACGT]{8,}")


def _load_gene_vocabulary() -> frozenset[str]:
    genes = set(_COMMON_GENES)
    for txt in sorted(_CELL_CYCLE_DIR.glob("*.txt")):
        genes.update(line.strip().upper() for line in txt.read_text().splitlines() if line.strip())
    return frozenset(genes)


def _gene_like_fraction(labels, vocabulary) -> float:
    labels = pd.Index(labels).astype(str)
    if len(labels) == 0:
        return 0.0
    upper = labels.str.upper()
    hits = upper.isin(vocabulary) | upper.str.startswith("MT-") | labels.str.match(_ENSEMBL_RE.pattern)
    return float(np.mean(hits))


def _barcode_like_fraction(labels) -> float:
    labels = pd.Index(labels).astype(str)
    if len(labels) == 0:
        return 0.0
    return float(np.mean(labels.str.contains(_BARCODE_RE.pattern)))


def detect_orientation(row_labels, col_labels) -> str | None:
    """``"cells_x_genes"`` / ``"genes_x_cells"`` from which axis looks like genes or barcodes.

    Genes: overlap with the shipped Tirosh cell-cycle lists and a few ubiquitous genes,
    ``MT-`` names, Ensembl IDs. Barcodes: runs of at least 8 ``ACGT`` letters. Returns ``None``
    when the evidence is absent or contradictory.
    """
    vocab = _load_gene_vocabulary()
    g_row, g_col = _gene_like_fraction(row_labels, vocab), _gene_like_fraction(col_labels, vocab)
    b_row, b_col = _barcode_like_fraction(row_labels), _barcode_like_fraction(col_labels)
    votes = set()
    if g_col > 2 * g_row and g_col > 0:
        votes.add("cells_x_genes")
    elif g_row > 2 * g_col and g_row > 0:
        votes.add("genes_x_cells")
    if b_row >= 0.5 > b_col:
        votes.add("cells_x_genes")
    elif b_col >= 0.5 > b_row:
        votes.add("genes_x_cells")
    return votes.pop() if len(votes) == 1 else None
