"""The shipped Tirosh et al. (2016) S and G2/M gene lists and finding them among a dataset's genes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import CosmicInputError
from .params import ORGANISMS, RESOURCES

# Symbols of list genes renamed since the lists were published (and older mouse symbols), so a
# gene is found under its current or former name whichever the data use.
GENE_ALIASES = {
    "MLF1IP": ("CENPU",), "CENPU": ("MLF1IP",),
    "FAM64A": ("PIMREG",), "PIMREG": ("FAM64A",),
    "HN1": ("JPT1",), "JPT1": ("HN1",),
    "Cenpu": ("Mlf1ip",), "Mlf1ip": ("Cenpu",),
    "Pimreg": ("Fam64a",), "Fam64a": ("Pimreg",),
    "Jpt1": ("Hn1",), "Hn1": ("Jpt1",),
    "Cdk1": ("Cdc2a",), "Tubb4b": ("Tubb2c",),
}


def read_gene_list(path) -> list[str]:
    """One symbol per non-empty line."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def gene_list_paths(organism: str, resources=None) -> dict[str, Path]:
    """Paths of the shipped S and G2/M lists of ``organism`` ("human" or "mouse")."""
    d = Path(resources) if resources is not None else RESOURCES
    return {"S": d / f"tirosh2016_s_genes_{organism}.txt", "G2M": d / f"tirosh2016_g2m_genes_{organism}.txt"}


def match_genes(genes: Sequence[str], var_names) -> list[str]:
    """Names in ``var_names`` of the listed genes (under their listed symbol or an alias in
    :data:`GENE_ALIASES`), in list order, without duplicates."""
    present = set(map(str, var_names))
    out: list[str] = []
    for g in genes:
        for name in (g, *GENE_ALIASES.get(g, ())):
            if name in present:
                if name not in out:
                    out.append(name)
                break
    return out


@dataclass
class CycleGenes:
    organism: str
    s_genes: list  # names as in the data
    g2m_genes: list
    n_s_listed: int
    n_g2m_listed: int
    s_missing: list  # listed symbols not found
    g2m_missing: list

    def summary(self) -> dict:
        return {"organism": self.organism,
                "S": {"listed": self.n_s_listed, "present": len(self.s_genes), "missing": self.s_missing},
                "G2M": {"listed": self.n_g2m_listed, "present": len(self.g2m_genes), "missing": self.g2m_missing}}


def _organism_genes(organism: str, var_names: pd.Index, resources=None) -> tuple[CycleGenes, dict[str, Path]]:
    """The listed genes of one organism found in ``var_names``, and the lists' paths."""
    paths = gene_list_paths(organism, resources)
    lists = {k: read_gene_list(p) for k, p in paths.items()}
    s, g = match_genes(lists["S"], var_names), match_genes(lists["G2M"], var_names)
    s_found = {x for x in lists["S"] if any(n in s for n in (x, *GENE_ALIASES.get(x, ())))}
    g_found = {x for x in lists["G2M"] if any(n in g for n in (x, *GENE_ALIASES.get(x, ())))}
    genes = CycleGenes(organism, s, g, len(lists["S"]), len(lists["G2M"]),
                       [x for x in lists["S"] if x not in s_found], [x for x in lists["G2M"] if x not in g_found])
    return genes, paths


def cell_cycle_genes(var_names, organism: str = "auto", min_genes: int = 3, where: str = "input",
                     resources=None) -> CycleGenes:
    """The Tirosh S and G2/M genes present in ``var_names``.

    ``organism="auto"`` takes the organism whose lists have more genes present (human on ties).
    Raises :class:`CosmicInputError` when fewer than ``min_genes`` of either list are present.
    """
    if organism not in ORGANISMS:
        raise CosmicInputError(f"{where}: cell_cycle organism must be one of {ORGANISMS}, got {organism!r}")
    var_names = pd.Index(map(str, var_names))
    candidates = []
    for org in (("human", "mouse") if organism == "auto" else (organism,)):
        genes, paths = _organism_genes(org, var_names, resources)
        candidates.append((len(genes.s_genes) + len(genes.g2m_genes), org, genes, paths))
    best = max(candidates, key=lambda c: c[0])  # max keeps the first (human) on ties
    genes, paths = best[2], best[3]
    if len(genes.s_genes) < min_genes or len(genes.g2m_genes) < min_genes:
        found = "; ".join(f"{c[1]}: {len(c[2].s_genes)} of {c[2].n_s_listed} S and {len(c[2].g2m_genes)} of "
                          f"{c[2].n_g2m_listed} G2/M genes" for c in candidates)
        examples = ", ".join(var_names[:5]) if len(var_names) else "none"
        raise CosmicInputError(
            f"{where}: too few cell-cycle genes among its {len(var_names)} genes (var_names such as {examples}) - "
            f"{found} of the Tirosh lists in {paths['S'].parent}; at least {min_genes} of each list are needed. "
            "var_names must be gene symbols of the data's organism (human 'MCM5', mouse 'Mcm5'): convert Ensembl "
            "IDs to symbols (rna.gene_symbol_column) or set cell_cycle.organism to the organism of the data.")
    return genes
