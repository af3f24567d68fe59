"""Cell cycle read from RNA and from nuclear morphology in the same cells.

RNA side
    * **Tirosh scoring**: :func:`scanpy.tl.score_genes_cell_cycle` with the shipped Tirosh et al.
      (2016) S and G2/M lists (``resources/cell_cycle``), seeded: ``S_score``, ``G2M_score`` and
      scanpy's discrete ``phase`` (G1 when both scores are negative, else the larger one).
    * **Continuous position** (``cycle_position``, radians in [0, 2π)): the angle of the first two
      principal components of the z-scored expression of the cycle genes, averaged over each
      cell's nearest neighbours in that PCA space (the Revelio / tricycle idea: cycle genes trace a
      loop in their leading PCs). The direction is set so that the S programme peaks before the
      G2/M programme and the G2/M programme before the G1 state (both programmes low); the origin
      is set so that the G2/M programme peaks at 0.9 x 2π, so 0 is close to cell division
      (the demo's convention). Nothing is fitted on phase labels.
    * **Phase from the position** (``phase_position``): each cell takes the phase whose programme
      peaks nearest to it on the circle (peaks: resultant direction of the S programme, of the G2/M
      programme and of "both low" for G1). Label-free, so its accuracy on FACS-sorted cells is an
      honest held-out number.

    Measured on real data (seed 0, defaults; asserted in ``tests/test_cell_cycle.py``):
    :func:`validate_peco_fucci` (888 iPSCs, position vs FUCCI angle): offset-free agreement 0.40,
    Fisher-Lee 0.11, Jammalamadaka-SenGupta -0.04 (unstable here, see below), against 0.35, -0.07
    and 0.37 for the angle of the Tirosh scores; :func:`validate_buettner` (182 mESCs, FACS G1 / S /
    G2M): accuracy 0.69 from the position against 0.47 for scanpy's Tirosh rule.
    The orientation assumes the data hold non-cycle genes: when the library is normalised over
    cycle genes only (as a 101-gene matrix is), "both programmes low" is a compositional artefact
    and the position may come out reflected.

Morphology side
    * **DNA content**: a two-component Gaussian mixture on log integrated DNA intensity per sample
      (seeded) gives the 2N and 4N peaks; DNA content in N is ``2 exp(log DNA - mu_2N)``. Cells
      nearer 4N are G2M, nearer 2N G1, and cells between the two peaks are called S (the S-phase
      shoulder of a DNA histogram) when their larger posterior is below ``s_max_posterior`` or they
      lie outside the central 95% of both peaks.
    * **Nuclear area** along the RNA position.
    * **Classifiers** from region-property features (``obsm["X_morph"]``) and the foundation
      embedding (``obsm["X_fm"]``) trained on the RNA phase, with held-out predictions only
      (stratified ``cross_val_predict``); ridge regression of (cos, sin) of the RNA position gives
      a held-out morphology position.

Circular statistics
    * :func:`circular_correlation`: Jammalamadaka & SenGupta (2001) correlation coefficient,
      ``sum sin(a - mean a) sin(b - mean b) / sqrt(sum sin^2(a - mean a) sum sin^2(b - mean b))``
      with circular means. Invariant to rotating either variable, changes sign when one is
      reflected; unreliable when a variable is nearly uniform (its mean direction is then
      ill-defined), hence also
    * :func:`circular_agreement`: offset- and direction-free agreement, the mean resultant length
      of ``a - d b`` maximised over the direction ``d`` in {+1, -1}: 1 when one variable is a
      rotation (or reflection) of the other, about 1/sqrt(n) for independent angles; returned
      with the best offset, direction and the median circular error after alignment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .atomic import atomic_path, write_json
from .errors import CosmicInputError, describe
from .plotting import not_available, save_figure

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[3] / "resources" / "cell_cycle"
PHASES = ("G1", "S", "G2M")
ORGANISMS = ("auto", "human", "mouse")
POSITION_METHODS = ("pca", "score_plane")
TWO_PI = 2.0 * math.pi
G2M_ANCHOR = 0.9 * TWO_PI  # the G2/M programme peaks here: position 0 is close to division

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
DNA_FEATURE = "morph_dna_integrated"
AREA_FEATURE = "morph_area"
FIGURES = ("score_plane", "dna_content", "area_along_cycle", "phase_confusion", "nuclei_along_cycle")
PHASE_COLORS = {"G1": "#4C72B0", "S": "#DD8452", "G2M": "#55A868"}


# ---------------------------------------------------------------------------------------
# parameters
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
        from .config import params_from_config

        return params_from_config(cls, "cell_cycle", mapping, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# gene lists
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
        paths = gene_list_paths(org, resources)
        lists = {k: read_gene_list(p) for k, p in paths.items()}
        s, g = match_genes(lists["S"], var_names), match_genes(lists["G2M"], var_names)
        s_found = {x for x in lists["S"] if any(n in s for n in (x, *GENE_ALIASES.get(x, ())))}
        g_found = {x for x in lists["G2M"] if any(n in g for n in (x, *GENE_ALIASES.get(x, ())))}
        candidates.append((len(s) + len(g), org, CycleGenes(
            org, s, g, len(lists["S"]), len(lists["G2M"]),
            [x for x in lists["S"] if x not in s_found], [x for x in lists["G2M"] if x not in g_found]), paths))
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


# ---------------------------------------------------------------------------------------
# circular statistics
def _pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"angles differ in length: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def circular_correlation(a, b) -> float:
    """Jammalamadaka-SenGupta circular correlation of two angle arrays (radians), in [-1, 1].

    ``r = sum sin(a - abar) sin(b - bbar) / sqrt(sum sin^2(a - abar) sum sin^2(b - bbar))`` with
    circular means ``abar``, ``bbar`` (Jammalamadaka & SenGupta 2001, Topics in Circular
    Statistics, eq. 8.2.2). Invariant to rotating either variable; a reflection of one flips the
    sign. NaN pairs are dropped; NaN when fewer than 3 pairs or a variable has no spread.
    """
    from scipy.stats import circmean

    a, b = _pairs(a, b)
    if len(a) < 3:
        return float("nan")
    sa, sb = np.sin(a - circmean(a)), np.sin(b - circmean(b))
    den = math.sqrt(float((sa ** 2).sum() * (sb ** 2).sum()))
    return float((sa * sb).sum() / den) if den > 0 else float("nan")


def circular_correlation_fl(a, b) -> float:
    """Fisher-Lee circular correlation of two angle arrays (radians), in [-1, 1].

    ``rho_T = sum_{i<j} sin(a_i - a_j) sin(b_i - b_j) / sqrt(sum_{i<j} sin^2(a_i - a_j) sum_{i<j} sin^2(b_i - b_j))``
    (Fisher & Lee 1983, Biometrika 70:327-332; Fisher 1993, eq. 6.36), computed in O(n) from sums
    of cos/sin. Needs no mean direction, so unlike :func:`circular_correlation` it stays stable when
    the angles are spread round the whole circle (as cell-cycle positions are). Rotation
    invariant; a reflection flips the sign.
    """
    a, b = _pairs(a, b)
    n = len(a)
    if n < 3:
        return float("nan")
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    num = 4.0 * ((ca * cb).sum() * (sa * sb).sum() - (ca * sb).sum() * (sa * cb).sum())
    den = (n * n - np.cos(2 * a).sum() ** 2 - np.sin(2 * a).sum() ** 2) * \
          (n * n - np.cos(2 * b).sum() ** 2 - np.sin(2 * b).sum() ** 2)
    return float(num / math.sqrt(den)) if den > 0 else float("nan")


def circular_agreement(a, b) -> dict:
    """Offset- and direction-free agreement between two angle arrays (radians).

    For each direction ``d`` in {+1, -1} the best rotation aligning ``d * b`` to ``a`` is the
    circular mean of ``a - d b``, and its mean resultant length ``R = |mean exp(i (a - d b))|``
    measures how well one rotation explains all pairs. Returns ``agreement`` (the larger R, in
    [0, 1]: 1 for a rotated or reflected copy, about 1/sqrt(n) for independent angles),
    ``direction`` (+1 / -1), ``offset`` (radians, ``a ~ d b + offset``) and
    ``median_error`` (median absolute circular difference after alignment, as a fraction of the
    cycle), and ``n``.
    """
    a, b = _pairs(a, b)
    if len(a) == 0:
        return {"agreement": float("nan"), "direction": 1, "offset": float("nan"), "median_error": float("nan"), "n": 0}
    best = None
    for d in (1, -1):
        m = np.exp(1j * (a - d * b)).mean()
        if best is None or abs(m) > best[0] + 1e-12:
            best = (abs(m), d, float(np.angle(m)) % TWO_PI)
    r, d, off = best
    err = np.abs(np.angle(np.exp(1j * (a - d * b - off))))
    return {"agreement": float(r), "direction": int(d), "offset": float(off),
            "median_error": float(np.median(err) / TWO_PI), "n": int(len(a))}


def _peak(angle: np.ndarray, weight: np.ndarray) -> float:
    """Direction where a programme peaks: angle of sum(z(weight) exp(i angle))."""
    w = np.asarray(weight, dtype=float)
    sd = w.std()
    w = (w - w.mean()) / (sd if sd > 0 else 1.0)
    return float(np.angle((w * np.exp(1j * angle)).sum()))


def _circ_dist(a, b) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


# ---------------------------------------------------------------------------------------
# RNA scoring
def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(0)
    sd[~(sd > 0)] = 1.0
    return (x - x.mean(0)) / sd


def tirosh_scores(adata, s_genes, g2m_genes, seed: int = 0) -> pd.DataFrame:
    """``S_score``, ``G2M_score`` and ``phase`` from :func:`scanpy.tl.score_genes_cell_cycle`
    (random control genes drawn with ``seed``); ``adata`` itself is not modified."""
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=pd.Index(adata.obs_names.astype(str))),
                     var=pd.DataFrame(index=pd.Index(adata.var_names.astype(str))))
    tmp.var_names_make_unique()
    sc.tl.score_genes_cell_cycle(tmp, s_genes=list(s_genes), g2m_genes=list(g2m_genes), random_state=seed)
    out = tmp.obs[["S_score", "G2M_score", "phase"]].copy()
    out["S_score"] = out["S_score"].astype(float)
    out["G2M_score"] = out["G2M_score"].astype(float)
    out["phase"] = out["phase"].astype(str)
    out.index = adata.obs_names
    return out


def cycle_position(expr_s, expr_g2m, n_neighbors: int = 10, n_pcs: int = 10, method: str = "pca",
                   scores: pd.DataFrame | None = None) -> tuple[np.ndarray, dict]:
    """Continuous cell-cycle position (radians in [0, 2π)) from log expression of the S and G2/M
    genes (cells x genes each).

    ``method="pca"``: angle of PC1/PC2 of the z-scored cycle genes after averaging each cell's PC
    scores over its ``n_neighbors`` nearest neighbours in the first ``n_pcs`` PCs.
    ``method="score_plane"``: angle of the Tirosh scores (``scores`` with ``S_score``,
    ``G2M_score``) around their medians. Either way the direction is set so that the S programme
    peaks before the G2/M programme and G2/M before G1 (both low), and the origin so that G2/M
    peaks at 0.9 x 2π. Returns the position and a dict with the programme peaks (``peaks``, in
    position coordinates), the plotted plane (``plane``: cells x 2) and its ``plane_offset``
    (position = plane angle + offset).
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    zs_, zg_ = _zscore(_dense(expr_s)), _zscore(_dense(expr_g2m))
    n = zs_.shape[0]
    if n < 3:
        raise CosmicInputError(f"the cell-cycle position needs at least 3 cells, got {n}")
    s_prog, g_prog = zs_.mean(1), zg_.mean(1)
    info: dict = {"method": method}
    if method == "pca":
        x = np.hstack([zs_, zg_])
        x = x[:, x.std(0) > 0]
        k = max(2, min(n_pcs, x.shape[1], n - 1))
        if x.shape[1] < 2:
            raise CosmicInputError("the cell-cycle genes do not vary across cells; no position can be computed")
        pca = PCA(n_components=k, svd_solver="full")
        pcs = pca.fit_transform(x)
        info["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_[:2]]
        nn = min(int(n_neighbors), n)
        if nn > 1:
            idx = NearestNeighbors(n_neighbors=nn).fit(pcs).kneighbors(pcs, return_distance=False)
            pcs = pcs[idx].mean(1)
        plane = pcs[:, :2].copy()
        info["n_neighbors"], info["n_pcs"] = nn if nn > 1 else 0, int(k)
    elif method == "score_plane":
        if scores is None:
            raise ValueError("method='score_plane' needs the Tirosh scores")
        s, g = scores["S_score"].to_numpy(float), scores["G2M_score"].to_numpy(float)
        plane = np.c_[s - np.median(s), g - np.median(g)]
    else:
        raise CosmicInputError(f"cell_cycle position_method must be one of {POSITION_METHODS}, got {method!r}")
    angle = np.arctan2(plane[:, 1], plane[:, 0])
    progs = {"G1": -(s_prog + g_prog), "S": s_prog, "G2M": g_prog}
    peaks = {p: _peak(angle, w) for p, w in progs.items()}
    # forward from the S peak, G2/M must come before G1
    flipped = (peaks["G2M"] - peaks["S"]) % TWO_PI > (peaks["G1"] - peaks["S"]) % TWO_PI
    if flipped:
        plane[:, 1] *= -1
        angle = -angle
        peaks = {p: -v for p, v in peaks.items()}
    offset = (G2M_ANCHOR - peaks["G2M"]) % TWO_PI
    position = (angle + offset) % TWO_PI
    info.update(plane=plane, plane_offset=float(offset), reflected=bool(flipped),
                peaks={p: float((v + offset) % TWO_PI) for p, v in peaks.items()},
                programmes={"S": s_prog, "G2M": g_prog})
    return position, info


def phase_from_position(position, peaks: Mapping[str, float]) -> np.ndarray:
    """Phase whose programme peak is nearest on the circle (G1, S, G2M)."""
    position = np.asarray(position, dtype=float)
    names = list(PHASES)
    d = np.stack([_circ_dist(position, peaks[p]) for p in names], 1)
    out = np.asarray(names, dtype=object)[d.argmin(1)]
    out[~np.isfinite(position)] = None
    return out


def score_cell_cycle(adata, organism: str = "auto", seed: int = 0, n_neighbors: int = 10,
                     method: str = "pca", min_genes: int = 3, where: str = "input",
                     resources=None) -> tuple[pd.DataFrame, dict]:
    """Score log-normalised ``adata.X`` (var_names = gene symbols).

    Returns a frame indexed like ``adata.obs`` with ``S_score``, ``G2M_score``, ``phase``
    (scanpy / Tirosh), ``cycle_position`` (radians in [0, 2π)), ``phase_position`` (nearest
    programme peak) and the programme z-scores ``S_program``, ``G2M_program``, plus an info dict
    (genes used, peaks, plane coordinates for plotting).
    """
    genes = cell_cycle_genes(adata.var_names, organism, min_genes=min_genes, where=where, resources=resources)
    scores = tirosh_scores(adata, genes.s_genes, genes.g2m_genes, seed=seed)
    vn = pd.Index(adata.var_names.astype(str))

    def cols(names):
        return _dense(adata.X[:, vn.get_indexer(names)])

    position, info = cycle_position(cols(genes.s_genes), cols(genes.g2m_genes), n_neighbors=n_neighbors,
                                    method=method, scores=scores)
    out = scores.copy()
    out["cycle_position"] = position
    out["phase_position"] = phase_from_position(position, info["peaks"])
    out["S_program"] = info["programmes"]["S"]
    out["G2M_program"] = info["programmes"]["G2M"]
    info["genes"] = genes.summary()
    return out, info


# ---------------------------------------------------------------------------------------
# morphology
def find_feature(names: Sequence[str], kind: str) -> str | None:
    """The DNA-content (``kind="dna"``) or nuclear-area (``kind="area"``) feature among ``names``.

    Image-derived cohorts have ``morph_dna_integrated`` / ``morph_area``; morphology tables are
    searched for a summed/integrated DAPI/DNA/Hoechst intensity and for an area or size column.
    """
    names = [str(n) for n in names]
    low = [n.lower() for n in names]
    if kind == "dna":
        if DNA_FEATURE in names:
            return DNA_FEATURE
        for i, n in enumerate(low):
            if any(t in n for t in ("dna", "dapi", "hoechst")) and any(t in n for t in ("integrated", "sum", "total")) \
                    and "adjust" not in n:
                return names[i]
        return None
    if kind == "area":
        for want in (AREA_FEATURE, "morph_size", "morph_nuclear_area", "morph_nucleus_area"):
            if want in names:
                return want
        for i, n in enumerate(low):
            if "area" in n or n.endswith("size"):
                return names[i]
        return None
    raise ValueError(kind)


def log_dna(values, feature: str) -> np.ndarray:
    """Natural log of DNA content from a feature: features named ``*log10*`` / ``*log2*`` / ``*log*``
    are already on a log scale; others must be positive (non-positive values become NaN)."""
    v = np.asarray(values, dtype=np.float64)
    name = feature.lower()
    if "log10" in name:
        return v * math.log(10)
    if "log2" in name:
        return v * math.log(2)
    if "log" in name:
        return v
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)


class DnaContentModel:
    """2N/4N Gaussian mixture on log DNA content, fitted per group (sample), seeded.

    Groups with fewer than ``min_cells`` finite values use the pooled fit.
    """

    def __init__(self, seed: int = 0, s_max_posterior: float = 0.9, min_cells: int = 20):
        self.seed, self.s_max_posterior, self.min_cells = seed, s_max_posterior, min_cells
        self.models: dict = {}

    @staticmethod
    def _key(g):
        return str(g)

    def _fit_one(self, x):
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=2, random_state=self.seed, n_init=3).fit(x[:, None])
        order = np.argsort(gm.means_.ravel())
        return gm, order

    def fit(self, log_dna, groups=None) -> "DnaContentModel":
        x = np.asarray(log_dna, dtype=float)
        groups = np.full(len(x), "all", dtype=object) if groups is None else np.asarray(groups, dtype=object)
        ok = np.isfinite(x)
        if ok.sum() < 4:
            raise CosmicInputError(f"DNA content: only {int(ok.sum())} cells with a positive DNA intensity; "
                                   "need at least 4 to find the 2N and 4N peaks")
        self.models = {None: self._fit_one(x[ok])}
        for g in pd.unique(groups):
            sel = ok & (groups == g)
            if sel.sum() >= self.min_cells:
                self.models[self._key(g)] = self._fit_one(x[sel])
        return self

    def peaks(self) -> dict:
        out = {}
        for k, (gm, order) in self.models.items():
            mu = gm.means_.ravel()[order]
            out["pooled" if k is None else k] = {"log_2N": float(mu[0]), "log_4N": float(mu[1]),
                                                 "ratio_4N_2N": float(np.exp(mu[1] - mu[0]))}
        return out

    def predict(self, log_dna, groups=None) -> pd.DataFrame:
        """``dna_n`` (content in N, 2N peak = 2), ``p_4n``, ``dna_ploidy`` (2N / 4N) and ``phase_dna``."""
        x = np.asarray(log_dna, dtype=float)
        groups = np.full(len(x), "all", dtype=object) if groups is None else np.asarray(groups, dtype=object)
        dna_n = np.full(len(x), np.nan)
        p4 = np.full(len(x), np.nan)
        phase = np.full(len(x), None, dtype=object)
        ploidy = np.full(len(x), None, dtype=object)
        for g in pd.unique(groups):
            sel = (groups == g) & np.isfinite(x)
            if not sel.any():
                continue
            gm, order = self.models.get(self._key(g), self.models[None])
            mu = gm.means_.ravel()[order]
            post = gm.predict_proba(x[sel][:, None])[:, order]
            dna_n[sel] = 2.0 * np.exp(x[sel] - mu[0])
            p4[sel] = post[:, 1]
            call = np.where(post[:, 1] > 0.5, "G2M", "G1").astype(object)
            ploidy[sel] = np.where(post[:, 1] > 0.5, "4N", "2N")
            sd = np.sqrt(gm.covariances_.ravel()[order])
            xs = x[sel]
            between = (xs > mu[0]) & (xs < mu[1])
            # S: between the peaks and either not clearly one of them, or outside the central 95% of both
            outside_both = ((xs - mu[0]) / sd[0] > 1.96) & ((mu[1] - xs) / sd[1] > 1.96)
            between &= (post.max(1) < self.s_max_posterior) | outside_both
            call[between] = "S"
            phase[sel] = call
        return pd.DataFrame({"dna_n": dna_n, "p_4n": p4, "dna_ploidy": ploidy, "phase_dna": phase})


def dna_content_phases(dna, groups=None, seed: int = 0, s_max_posterior: float = 0.9,
                       feature: str = DNA_FEATURE) -> tuple[pd.DataFrame, DnaContentModel]:
    """Fit :class:`DnaContentModel` on a DNA-content feature and call every cell (see the class)."""
    x = log_dna(dna, feature)
    model = DnaContentModel(seed=seed, s_max_posterior=s_max_posterior).fit(x, groups)
    return model.predict(x, groups), model


def _cv_splits(labels, n_splits):
    counts = pd.Series(labels).value_counts()
    return int(min(n_splits, counts.min())) if len(counts) >= 2 else 0


def morphology_phase_cv(x, labels, seed: int = 0, n_splits: int = 5) -> np.ndarray | None:
    """Held-out phase predictions from morphology (standardised features, multinomial logistic
    regression), by stratified ``cross_val_predict``; None when a class has fewer than 2 cells."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=object)
    k = _cv_splits(labels, n_splits)
    if k < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, solver="newton-cg"))
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    return cross_val_predict(model, x, labels.astype(str), cv=StratifiedKFold(k, shuffle=True, random_state=seed))


def morphology_position_cv(x, position, seed: int = 0, n_splits: int = 5) -> np.ndarray:
    """Held-out position from morphology: ridge regression of (cos, sin) of ``position``
    (``cross_val_predict``, shuffled K folds), angle of the prediction."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    position = np.asarray(position, dtype=float)
    k = int(min(n_splits, len(position)))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    y = np.c_[np.cos(position), np.sin(position)]
    pred = cross_val_predict(model, np.nan_to_num(np.asarray(x, dtype=np.float64)), y,
                             cv=KFold(k, shuffle=True, random_state=seed))
    return np.arctan2(pred[:, 1], pred[:, 0]) % TWO_PI


def phase_agreement(reference, predicted, labels: Sequence[str] = PHASES) -> dict:
    """Accuracy, balanced accuracy, Cohen's kappa and the confusion matrix (rows: reference)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix

    r = pd.Series(reference, dtype=object).to_numpy()
    p = pd.Series(predicted, dtype=object).to_numpy()
    ok = pd.notna(r) & pd.notna(p)
    r, p = r[ok].astype(str), p[ok].astype(str)
    labels = list(labels)
    out = {"n": int(ok.sum()), "labels": labels}
    if not len(r):
        return out | {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "kappa": float("nan"),
                      "confusion": [[0] * len(labels) for _ in labels]}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bal = balanced_accuracy_score(r, p)
        kappa = cohen_kappa_score(r, p, labels=labels)
    return out | {"accuracy": float(accuracy_score(r, p)), "balanced_accuracy": float(bal),
                  "kappa": float(kappa), "confusion": confusion_matrix(r, p, labels=labels).tolist()}


def _truth_phase(phase) -> np.ndarray:
    return pd.Series(phase, dtype=object).replace({"G2": "G2M", "M": "G2M", "G2/M": "G2M"}).to_numpy()


# ---------------------------------------------------------------------------------------
# validation on real labelled data
def validate_peco_fucci(path, seed: int = 0, n_neighbors: int = 10, method: str = "pca") -> dict:
    """RNA position of the peco / fucci-seq iPSCs against their FUCCI angle ``obs["theta"]``.

    Counts (``X``, 101 genes) are normalised by the endogenous library size ``obs["mol_hs"]``
    (the whole transcriptome, not just these 101 cyclic genes) and log1p-transformed; genes are
    named by ``var["hgnc"]``. Returns the circular correlation, the offset-free agreement and,
    for comparison, the same numbers for the angle of the Tirosh scores (``score_plane``).
    """
    import anndata as ad

    path = Path(path)
    a = ad.read_h5ad(path)
    counts = _dense(a.X)
    lib = a.obs["mol_hs"].to_numpy(float) if "mol_hs" in a.obs else counts.sum(1)
    lib = np.where(lib > 0, lib, np.nan)
    x = np.log1p(counts / lib[:, None] * 1e4)
    var = pd.DataFrame(index=pd.Index(a.var["hgnc"].astype(str) if "hgnc" in a.var else a.var_names.astype(str)))
    b = ad.AnnData(X=np.nan_to_num(x), obs=pd.DataFrame(index=a.obs_names), var=var)
    b.var_names_make_unique()
    theta = a.obs["theta"].to_numpy(float)
    out = {"dataset": path.name, "n_cells": int(b.n_obs), "normalisation": "counts / mol_hs x 1e4, log1p"}
    for m in (method, "score_plane" if method != "score_plane" else "pca"):
        cells, info = score_cell_cycle(b, organism="human", seed=seed, n_neighbors=n_neighbors, method=m,
                                       where=describe(path))
        agree = circular_agreement(cells["cycle_position"], theta)
        res = {"circular_correlation": circular_correlation(cells["cycle_position"], theta),
               "circular_correlation_fl": circular_correlation_fl(cells["cycle_position"], theta),
               "circular_agreement": agree["agreement"], "direction": agree["direction"],
               "offset": agree["offset"], "median_error": agree["median_error"]}
        if m == method:
            out.update(res, method=m, n_s_genes=info["genes"]["S"]["present"],
                       n_g2m_genes=info["genes"]["G2M"]["present"])
        else:
            out["alternative"] = {"method": m, **res}
    return out


def validate_buettner(path, seed: int = 0, n_neighbors: int = 10, method: str = "pca") -> dict:
    """Phase calls of the Buettner et al. 2015 mESCs against their FACS phase ``obs["phase"]``.

    Read counts are normalised with scanpy (``normalize_total`` to 10,000, ``log1p``) and scored
    with the mouse lists. Returns accuracy (and balanced accuracy, confusion matrices with rows =
    FACS phase) of scanpy's Tirosh calls and of the label-free calls from the position.
    """
    import anndata as ad
    import scanpy as sc

    path = Path(path)
    a = ad.read_h5ad(path)
    facs = a.obs["phase"].astype(str).to_numpy()
    b = ad.AnnData(X=a.X.astype(np.float32), obs=pd.DataFrame(index=a.obs_names), var=pd.DataFrame(index=a.var_names))
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    cells, info = score_cell_cycle(b, organism="mouse", seed=seed, n_neighbors=n_neighbors, method=method,
                                   where=describe(path))
    tir = phase_agreement(facs, cells["phase"])
    pos = phase_agreement(facs, cells["phase_position"])
    return {"dataset": path.name, "n_cells": int(b.n_obs), "method": method,
            "n_s_genes": info["genes"]["S"]["present"], "n_g2m_genes": info["genes"]["G2M"]["present"],
            "accuracy_tirosh": tir["accuracy"], "accuracy_position": pos["accuracy"],
            "balanced_accuracy_tirosh": tir["balanced_accuracy"],
            "balanced_accuracy_position": pos["balanced_accuracy"],
            "labels": list(PHASES), "confusion_tirosh": tir["confusion"], "confusion_position": pos["confusion"]}


# ---------------------------------------------------------------------------------------
# the stage
def load_truth_cells(truth) -> pd.DataFrame | None:
    """The demo's ``ground_truth.tsv`` (a directory holding it, the file, or a frame)."""
    if truth is None:
        return None
    if isinstance(truth, pd.DataFrame):
        table = truth
    else:
        p = Path(truth)
        p = p / "ground_truth.tsv" if p.is_dir() else p
        if not p.exists():
            raise CosmicInputError(f"{describe(p)}: demo ground truth not found; run the demo rule or pass truth=None")
        table = pd.read_csv(p, sep="\t")
    need = {"sample", "barcode", "cycle_position", "phase"}
    if not need <= set(table.columns):
        raise CosmicInputError(f"demo ground truth lacks the columns {sorted(need - set(table.columns))}")
    table = table[table["barcode"].notna()]
    return table.drop_duplicates(["sample", "barcode"])


def _read_adata(x, what):
    import anndata as ad

    if x is None or isinstance(x, ad.AnnData):
        return x, what
    p = Path(x)
    if not p.exists():
        raise CosmicInputError(f"{describe(p)}: {what} not found; run the rule that writes it first")
    try:
        return ad.read_h5ad(p), describe(p)
    except Exception as exc:  # noqa: BLE001
        raise CosmicInputError(f"{describe(p)}: unreadable h5ad ({exc}); delete it and re-run its rule") from exc


def _generated_images_path(predictions, pred) -> Path | None:
    """The COSMIC-generated images next to ``predictions`` when they belong to it."""
    if predictions is None or not isinstance(predictions, (str, Path)):
        return None
    p = Path(predictions)
    meta = dict(pred.uns.get("cosmic", {})) if pred is not None else {}
    named = meta.get("generated_images")
    img = p.with_name(str(named)) if named else p.with_name(p.name.replace(".h5ad", "") + "_generated_images.npy")
    if not img.exists():
        return None
    if not named and meta.get("representation") not in (None, "fm"):
        log.warning("cell_cycle: ignoring %s: predictions were made with representation %r and do not name it "
                    "(a leftover from an earlier run)", img, meta.get("representation"))
        return None
    return img


def _reference_angle_agreement(obs: pd.DataFrame, key: str, cells: pd.DataFrame, where: str) -> dict:
    """RNA position against an independently measured cycle angle (e.g. FUCCI theta) in obs."""
    if key not in obs:
        raise CosmicInputError(f"{where}: cell_cycle.reference_angle_key '{key}' is not an obs column; "
                               f"obs has {list(obs.columns)[:25]}.")
    angle = pd.to_numeric(obs[key], errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(angle)
    if ok.sum() < 10:
        raise CosmicInputError(f"{where}: obs['{key}'] has {int(ok.sum())} numeric angles; need at least 10.")
    angle = np.mod(angle, TWO_PI)
    position = cells["cycle_position"].to_numpy(np.float64)
    cells[f"reference_{key}"] = np.where(ok, angle, np.nan)
    return {"key": key, "n": int(ok.sum()),
            "circular_correlation": circular_correlation(position[ok], angle[ok]),
            "circular_correlation_fl": circular_correlation_fl(position[ok], angle[ok]),
            "agreement": circular_agreement(position[ok], angle[ok])}


def run_cell_cycle(cohort, predictions, outdir, params: Mapping | None = None, truth_dir=None,
                   crops: Mapping[str, str] | None = None, generated_images=None, dna_channel: int = 0) -> dict:
    """Cell-cycle stage: RNA phase and position, morphology calls, agreement, figures.

    ``cohort``: ``paired/cohort.h5ad`` (path or AnnData). ``predictions``: ``cosmic/predictions.h5ad``
    (path, AnnData or None); its generated images are read from ``generated_images`` or, when the
    predictions name them (``uns["cosmic"]["generated_images"]``), from the file next to it.
    ``crops``: sample -> ``crops.npy`` (observed nuclei for the strip when no generated images).
    ``truth_dir``: the demo's ground-truth directory (scores against the truth when given).
    Writes ``cells.tsv``, ``confusion.tsv``, ``summary.json`` and ``figures/*.png`` (+ ``.txt``
    captions) under ``outdir``; returns the summary.
    """
    p = params if isinstance(params, CellCycleParams) else CellCycleParams.from_config(params)
    outdir = Path(outdir)
    adata, where = _read_adata(cohort, "paired cohort")
    pred, _ = _read_adata(predictions, "COSMIC predictions")
    if adata.n_obs < 10:
        raise CosmicInputError(f"{where}: {adata.n_obs} paired cells; the cell-cycle analysis needs at least 10")
    obs = adata.obs
    sample = obs["sample"].astype(str).to_numpy() if "sample" in obs else np.full(adata.n_obs, "all", dtype=object)
    barcode = obs["barcode"].astype(str).to_numpy() if "barcode" in obs else adata.obs_names.astype(str).to_numpy()

    # --- RNA
    rna, info = score_cell_cycle(adata, p.organism, seed=p.seed, n_neighbors=p.n_neighbors,
                                 method=p.position_method, min_genes=p.min_genes, where=where)
    cells = pd.DataFrame({"cell_id": adata.obs_names.astype(str), "sample": sample, "barcode": barcode})
    for c in ("S_score", "G2M_score", "phase", "phase_position", "cycle_position"):
        cells[c] = rna[c].to_numpy()
    cells["cycle_fraction"] = cells["cycle_position"] / TWO_PI
    ref = cells["phase_position"].to_numpy()
    summary: dict = {
        "n_cells": int(adata.n_obs), "samples": sorted(pd.unique(sample).tolist()), "params": p.to_dict(),
        "genes": info["genes"],
        "rna": {"position_method": info["method"], "peaks": info["peaks"], "reflected": info["reflected"],
                "phase_counts_tirosh": cells["phase"].value_counts().to_dict(),
                "phase_counts_position": cells["phase_position"].value_counts().to_dict(),
                "tirosh_vs_position": phase_agreement(cells["phase"], cells["phase_position"])},
    }
    if p.reference_angle_key is not None:
        summary["reference_angle"] = _reference_angle_agreement(obs, p.reference_angle_key, cells, where)
    confusions: dict[str, dict] = {}

    # --- morphology: DNA content and area
    names = [str(n) for n in adata.uns.get("morph_features", [])]
    xm = np.asarray(adata.obsm["X_morph"], dtype=np.float64) if "X_morph" in adata.obsm else None
    if xm is not None and len(names) != xm.shape[1]:
        names = [f"morph_{i}" for i in range(xm.shape[1])]
    dna_f = find_feature(names, "dna") if xm is not None else None
    area_f = find_feature(names, "area") if xm is not None else None
    morph: dict = {"dna_feature": dna_f, "area_feature": area_f}
    dna_model = None
    if dna_f is not None:
        cells["dna_content"] = xm[:, names.index(dna_f)]
        try:
            calls, dna_model = dna_content_phases(cells["dna_content"], sample, seed=p.seed,
                                                  s_max_posterior=p.s_max_posterior, feature=dna_f)
        except CosmicInputError as exc:
            morph["dna_note"] = str(exc)
        else:
            for c in calls.columns:
                cells[c] = calls[c].to_numpy()
            morph["dna_peaks"] = dna_model.peaks()
            morph["phase_counts_dna"] = cells["phase_dna"].value_counts().to_dict()
            confusions["dna_content"] = phase_agreement(ref, cells["phase_dna"])
            summary.setdefault("agreement", {})["dna_content_vs_rna_tirosh"] = phase_agreement(cells["phase"],
                                                                                                 cells["phase_dna"])
    else:
        morph["dna_note"] = f"no DNA-content feature among {names[:10]}"
    if area_f is not None:
        cells["area"] = xm[:, names.index(area_f)]
        morph["area_by_rna_phase"] = cells.groupby("phase_position")["area"].median().to_dict()
    summary["morphology"] = morph

    # --- morphology classifiers (held-out)
    reps = {}
    if xm is not None:
        reps["features"] = xm
    if "X_fm" in adata.obsm:
        reps["fm"] = np.asarray(adata.obsm["X_fm"], dtype=np.float64)
    classifiers = {}
    for name, x in reps.items():
        pred_phase = morphology_phase_cv(x, ref, seed=p.seed, n_splits=p.cv_folds)
        pos = morphology_position_cv(x, cells["cycle_position"], seed=p.seed, n_splits=p.cv_folds)
        cells[f"position_morph_{name}"] = pos
        res = {"position_circular_correlation": circular_correlation(cells["cycle_position"], pos),
               "position_circular_correlation_fl": circular_correlation_fl(cells["cycle_position"], pos),
               "position_agreement": circular_agreement(cells["cycle_position"], pos)}
        if pred_phase is not None:
            cells[f"phase_morph_{name}"] = pred_phase
            confusions[f"classifier_{name}"] = phase_agreement(ref, pred_phase)
            res.update(confusions[f"classifier_{name}"])
        classifiers[name] = res
    summary["classifiers"] = classifiers
    agreement = summary.setdefault("agreement", {})
    for k, v in confusions.items():
        agreement[f"{k}_vs_rna"] = v

    # --- COSMIC predictions: generated morphology of held-out cells
    test_rows = np.array([], dtype=int)
    generated = {"available": pred is not None}
    if pred is not None:
        pos_of = pd.Series(np.arange(adata.n_obs), index=adata.obs_names.astype(str))
        test_rows = pos_of.reindex(pred.obs_names.astype(str)).to_numpy()
        ok_rows = ~pd.isna(test_rows)
        test_rows = test_rows[ok_rows].astype(int)
        cells["split"] = "train/val"
        cells.loc[test_rows, "split"] = "test"
        generated["n_test_cells"] = int(len(test_rows))
        gen_names = [str(n) for n in pred.uns.get("cosmic", {}).get("morph_features", names)]
        g = pred.obsm.get("X_morph_features_generated")
        if g is not None and len(gen_names) == g.shape[1]:
            g = np.asarray(g, dtype=np.float64)[ok_rows]
            if dna_model is not None and dna_f in gen_names:
                gx = log_dna(g[:, gen_names.index(dna_f)], dna_f)
                gcalls = dna_model.predict(gx, sample[test_rows])
                cells["dna_n_generated"] = np.nan
                cells.loc[test_rows, "dna_n_generated"] = gcalls["dna_n"].to_numpy()
                cells["phase_dna_generated"] = None
                cells.loc[test_rows, "phase_dna_generated"] = gcalls["phase_dna"].to_numpy()
                generated["dna_generated_vs_rna"] = phase_agreement(ref[test_rows], gcalls["phase_dna"])
                generated["dna_observed_vs_rna_same_cells"] = phase_agreement(ref[test_rows],
                                                                              cells["phase_dna"].to_numpy()[test_rows])
                confusions["generated_dna"] = generated["dna_generated_vs_rna"]
            if area_f is not None and area_f in gen_names:
                cells["area_generated"] = np.nan
                cells.loc[test_rows, "area_generated"] = g[:, gen_names.index(area_f)]
    summary["generated"] = generated

    # --- demo truth
    truth = load_truth_cells(truth_dir)
    if truth is not None:
        summary["truth"] = _truth_summary(cells, truth)

    # --- images for the strip
    images = _strip_images(cells, pred, predictions, generated_images, crops, adata, test_rows, p, dna_channel)
    summary["nuclei_strip"] = {"source": images["source"], "n_bins": p.n_position_bins}

    # --- outputs
    figdir = outdir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    _fig_score_plane(cells, info, figdir)
    _fig_dna_content(cells, dna_model, figdir)
    _fig_along_cycle(cells, info, p.n_position_bins, figdir)
    _fig_confusion(confusions, figdir)
    _fig_nuclei(images, cells, info, p.n_position_bins, figdir, adata, names)
    summary["figures"] = {f: f"figures/{f}.png" for f in FIGURES}

    long = []
    for comp, res in confusions.items():
        labels = res["labels"]
        for i, r in enumerate(labels):
            for j, c in enumerate(labels):
                long.append({"comparison": comp, "rna_phase": r, "morphology_phase": c,
                             "n_cells": res["confusion"][i][j]})
    with atomic_path(outdir / "confusion.tsv") as tmp:
        pd.DataFrame(long, columns=["comparison", "rna_phase", "morphology_phase", "n_cells"]).to_csv(
            tmp, sep="\t", index=False)
    with atomic_path(outdir / "cells.tsv") as tmp:
        cells.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return write_json(outdir / "summary.json", summary)


def _truth_summary(cells: pd.DataFrame, truth: pd.DataFrame) -> dict:
    m = cells.merge(truth[["sample", "barcode", "cycle_position", "phase"]
                          + [c for c in ("dna_content",) if c in truth]].rename(
        columns={"cycle_position": "true_position", "phase": "true_phase", "dna_content": "true_dna_content"}),
        on=["sample", "barcode"], how="left")
    ok = m["true_position"].notna().to_numpy()
    out: dict = {"n_matched": int(ok.sum())}
    if not ok.any():
        return out
    m = m[ok]
    tp = m["true_position"].to_numpy(float) * TWO_PI
    tph = _truth_phase(m["true_phase"])
    out["position_circular_correlation"] = circular_correlation(m["cycle_position"], tp)
    out["position_circular_correlation_fl"] = circular_correlation_fl(m["cycle_position"], tp)
    out["position_agreement"] = circular_agreement(m["cycle_position"], tp)
    nonG1 = tph != "G1"
    out["position_circular_correlation_S_G2M"] = circular_correlation(m["cycle_position"][nonG1], tp[nonG1])
    out["rna_phase_tirosh"] = phase_agreement(tph, m["phase"])
    out["rna_phase_position"] = phase_agreement(tph, m["phase_position"])
    if "phase_dna" in m:
        out["dna_phase"] = phase_agreement(tph, m["phase_dna"])
        if "true_dna_content" in m:
            ok2 = m["dna_n"].notna() & m["true_dna_content"].notna()
            out["dna_n_vs_true_dna_content_pearson"] = float(np.corrcoef(m.loc[ok2, "dna_n"],
                                                                         m.loc[ok2, "true_dna_content"])[0, 1])
    for c in [c for c in m.columns if c.startswith("phase_morph_")]:
        out[c] = phase_agreement(tph, m[c])
    if "phase_dna_generated" in m:
        sel = m["phase_dna_generated"].notna().to_numpy()
        out["generated_dna_phase"] = phase_agreement(tph[sel], m["phase_dna_generated"].to_numpy()[sel])
    return out


# ---------------------------------------------------------------------------------------
# figures
def _caption(figdir: Path, name: str, text: str):
    with atomic_path(figdir / f"{name}.txt") as tmp:
        Path(tmp).write_text(text.strip() + "\n")


def _plt():
    from .plotting import _pyplot

    return _pyplot()


def _fig_score_plane(cells, info, figdir):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ax = axes[0]
    for ph in PHASES:
        sel = cells["phase_position"] == ph
        ax.scatter(cells.loc[sel, "S_score"], cells.loc[sel, "G2M_score"], s=6, alpha=0.6, color=PHASE_COLORS[ph],
                   label=f"{ph} ({int(sel.sum())})")
    ax.axhline(0, color="grey", lw=0.6, ls=":")
    ax.axvline(0, color="grey", lw=0.6, ls=":")
    ax.set_title("Tirosh scores (colour: phase from the cycle position)")
    ax.set_xlabel("S score (scanpy)")
    ax.set_ylabel("G2/M score (scanpy)")
    ax.legend(fontsize=8, markerscale=2)
    ax = axes[1]
    plane = info["plane"]
    sc_ = ax.scatter(plane[:, 0], plane[:, 1], c=cells["cycle_position"], cmap="twilight", vmin=0, vmax=TWO_PI, s=6)
    r = np.percentile(np.hypot(plane[:, 0], plane[:, 1]), 95)
    for ph, ang in info["peaks"].items():
        a = ang - info["plane_offset"]
        ax.plot([0, r * math.cos(a)], [0, r * math.sin(a)], color=PHASE_COLORS[ph], lw=2)
        ax.annotate(ph, (1.08 * r * math.cos(a), 1.08 * r * math.sin(a)), color=PHASE_COLORS[ph], fontweight="bold",
                    ha="center", va="center")
    ax.plot(0, 0, "k+")
    fig.colorbar(sc_, ax=ax, label="cycle position (radians)")
    what = "PC1/PC2 of z-scored cycle genes, neighbour-averaged" if info["method"] == "pca" \
        else "Tirosh scores around their medians"
    ax.set_title("Cycle position = angle in this plane")
    ax.set_xlabel("plane axis 1 (" + ("PC1" if info["method"] == "pca" else "S score") + ")")
    ax.set_ylabel("plane axis 2 (" + ("PC2" if info["method"] == "pca" else "G2/M score") + ")")
    ax.set_aspect("equal", adjustable="datalim")
    save_figure(fig, figdir / "score_plane.png")
    _caption(figdir, "score_plane",
             "Left: scanpy Tirosh S and G2/M scores per cell, coloured by the phase read from the continuous "
             "position. "
             f"Right: the position plane ({what}); the position is the angle around the origin and lines mark "
             f"where the G1, S and G2/M programmes peak.")


def _fig_dna_content(cells, dna_model, figdir):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if dna_model is None or "dna_n" not in cells:
        not_available(ax, "DNA content by RNA phase", "no DNA-content feature in the morphology",
                      "DNA content (N)", "cells")
        caption = "No DNA-content feature was found among the morphology features, so no DNA histogram is shown."
    else:
        v = cells["dna_n"].to_numpy(float)
        hi = float(np.nanpercentile(v, 99.5)) if np.isfinite(v).any() else 6.0
        hi = max(hi, 5.0)
        bins = np.linspace(0, hi, 70)
        ax.hist(v[np.isfinite(v)], bins=bins, color="lightgrey", label="all cells")
        for ph in PHASES:
            sel = (cells["phase_position"] == ph).to_numpy() & np.isfinite(v)
            ax.hist(v[sel], bins=bins, histtype="step", lw=1.6, color=PHASE_COLORS[ph], label=f"RNA {ph}")
        ratios = [pk["ratio_4N_2N"] for pk in dna_model.peaks().values()]
        ax.axvline(2, color="k", ls="--", lw=1, label="2N peak (mixture)")
        ax.axvline(2 * float(np.median(ratios)), color="k", ls=":", lw=1, label="4N peak (mixture, median)")
        ax.set_title("DNA content by RNA phase")
        ax.set_xlabel("DNA content (N; 2N peak of each sample at 2)")
        ax.set_ylabel("cells")
        ax.legend(fontsize=8)
        caption = ("Integrated DNA intensity scaled per sample so the 2N peak of a two-component Gaussian mixture on "
                   "log DNA content sits at 2; grey: all cells, lines: cells by RNA phase (from the cycle position).")
    save_figure(fig, figdir / "dna_content.png")
    _caption(figdir, "dna_content", caption)


def _binned(position, values, n_bins):
    edges = np.linspace(0, TWO_PI, n_bins + 1)
    idx = np.clip(np.digitize(position, edges) - 1, 0, n_bins - 1)
    mean, err = np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    for b in range(n_bins):
        v = values[(idx == b) & np.isfinite(values)]
        if len(v):
            mean[b] = v.mean()
            err[b] = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return (edges[:-1] + edges[1:]) / 2 / TWO_PI, mean, err


def _fig_along_cycle(cells, info, n_bins, figdir):
    plt = _plt()
    panels = [("area", "nuclear area"), ("dna_n", "DNA content (N)")]
    panels = [(c, lab) for c, lab in panels if c in cells]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), squeeze=False)
    pos = cells["cycle_position"].to_numpy(float)
    if not panels:
        not_available(axes[0, 0], "Nuclear area along the RNA cell-cycle position",
                      "no area or DNA-content feature", "RNA cell-cycle position (fraction of the cycle)",
                      "nuclear area")
    for ax, (col, lab) in zip(axes[0], panels):
        x, m, e = _binned(pos, cells[col].to_numpy(float), n_bins)
        ax.errorbar(x, m, yerr=e, marker="o", capsize=3, label="observed (all cells)")
        gcol = {"area": "area_generated", "dna_n": "dna_n_generated"}[col]
        if gcol in cells and cells[gcol].notna().any():
            x2, m2, e2 = _binned(pos, cells[gcol].to_numpy(float), n_bins)
            ax.errorbar(x2 + 0.005, m2, yerr=e2, marker="s", capsize=3, ls="--",
                        label="COSMIC-generated from RNA (test cells)")
        for ph, ang in info["peaks"].items():
            ax.axvline(ang / TWO_PI, color=PHASE_COLORS[ph], lw=1, ls=":")
            ax.text(ang / TWO_PI, 1.0, ph, color=PHASE_COLORS[ph], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"{lab[0].upper() + lab[1:]} along the RNA cell-cycle position", pad=14)
        ax.set_xlabel("RNA cell-cycle position (fraction of the cycle, bin centre)")
        ax.set_ylabel(f"{lab} (mean, 95% CI)")
        ax.legend(fontsize=8)
    save_figure(fig, figdir / "area_along_cycle.png")
    _caption(figdir, "area_along_cycle",
             f"Mean nuclear area and DNA content in {n_bins} bins of the RNA cell-cycle position (error bars: 95% "
             "confidence intervals); dashed: the same features generated by COSMIC from RNA for held-out cells; "
             "dotted lines: where the G1, S and G2/M programmes peak.")


def _fig_confusion(confusions, figdir):
    plt = _plt()
    titles = {"dna_content": "DNA content (2N/4N mixture)", "classifier_features": "region features (held-out)",
              "classifier_fm": "foundation embedding (held-out)", "generated_dna": "COSMIC-generated DNA content"}
    items = [(k, v) for k, v in confusions.items() if v.get("n", 0) > 0]
    fig, axes = plt.subplots(1, max(1, len(items)), figsize=(4.4 * max(1, len(items)), 4.2), squeeze=False,
                             layout="constrained")
    if not items:
        not_available(axes[0, 0], "RNA vs morphology phase", "no morphology phase calls", "morphology phase",
                      "RNA phase")
    for ax, (k, v) in zip(axes[0], items):
        cm = np.asarray(v["confusion"], dtype=float)
        frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                        color="white" if frac[i, j] > 0.6 else "black", fontsize=9)
        ax.set_xticks(range(len(v["labels"])), v["labels"])
        ax.set_yticks(range(len(v["labels"])), v["labels"])
        ax.set_title(f"{titles.get(k, k)}\naccuracy {v['accuracy']:.2f}, kappa {v['kappa']:.2f}", fontsize=10)
        ax.set_xlabel("morphology phase")
        ax.set_ylabel("RNA phase (from position)")
    save_figure(fig, figdir / "phase_confusion.png")
    _caption(figdir, "phase_confusion",
             "Cells by RNA phase (rows, from the cycle position) and phase read from morphology (columns); colour: "
             "row fraction, numbers: cells. Classifier and generated-morphology calls are for cells not used to "
             "fit them.")


def _representatives(position, n_bins, candidates):
    """Split the candidate cells, ordered by position, into ``n_bins`` equal-count groups and
    take the median cell of each: returns (positions of the chosen cells, row indices)."""
    cand = np.asarray(candidates, dtype=int)
    cand = cand[np.isfinite(position[cand])]
    cand = cand[np.argsort(position[cand], kind="stable")]
    groups = [g for g in np.array_split(cand, n_bins)]
    reps = [int(g[len(g) // 2]) if len(g) else None for g in groups]
    centres = np.array([position[r] if r is not None else np.nan for r in reps])
    return centres, reps


def _strip_images(cells, pred, predictions, generated_images, crops, adata, test_rows, p, dna_channel):
    """Images for the nuclei strip: generated (test cells) when available, else observed crops."""
    pos = cells["cycle_position"].to_numpy(float)
    out = {"source": "none", "rows": []}
    gen_path = Path(generated_images) if generated_images is not None else _generated_images_path(predictions, pred)
    gen = None
    if gen_path is not None and gen_path.exists() and pred is not None:
        arr = np.load(gen_path, mmap_mode="r")
        if arr.ndim == 5 and arr.shape[1] == pred.n_obs:
            gen = arr
        else:
            log.warning("cell_cycle: %s has shape %s, not (1 + samples) x %d cells x C x S x S; not used",
                        gen_path, arr.shape, pred.n_obs)
    crop_banks = {}
    if crops and "crop_index" in adata.obs:
        for s, path in dict(crops).items():
            if path is not None and Path(path).exists():
                crop_banks[str(s)] = np.load(path, mmap_mode="r")

    def crop_of(row):
        s = cells.at[row, "sample"]
        bank = crop_banks.get(str(s))
        if bank is None:
            return None
        ci = int(adata.obs["crop_index"].iloc[row])
        return np.asarray(bank[ci, min(dna_channel, bank.shape[1] - 1)], dtype=np.float32)

    if gen is not None:
        pred_index = pd.Series(np.arange(pred.n_obs), index=pred.obs_names.astype(str))
        centres, reps = _representatives(pos, p.n_position_bins, test_rows)
        gen_row = [np.asarray(gen[0, pred_index[cells.at[r, "cell_id"]], min(dna_channel, gen.shape[2] - 1)],
                              dtype=np.float32) if r is not None else None for r in reps]
        out = {"source": "generated", "centres": centres, "cells": reps,
               "rows": [("COSMIC-generated (mean)", gen_row)]}
        if crop_banks:
            out["rows"].append(("observed crop", [crop_of(r) if r is not None else None for r in reps]))
    elif crop_banks:
        candidates = [i for i in range(len(cells)) if str(cells.at[i, "sample"]) in crop_banks]
        centres, reps = _representatives(pos, p.n_position_bins, candidates)
        out = {"source": "observed", "centres": centres, "cells": reps,
               "rows": [("observed crop", [crop_of(r) if r is not None else None for r in reps])]}
    return out


def _fig_nuclei(images, cells, info, n_bins, figdir, adata, names):
    plt = _plt()
    if images["source"] == "none":
        # no images (morphology tables): standardised features along the cycle instead
        fig, ax = plt.subplots(figsize=(max(6, n_bins * 0.9), 4.5))
        xm = np.asarray(adata.obsm["X_morph"], dtype=float) if "X_morph" in adata.obsm else None
        if xm is not None and xm.shape[1]:
            z = (xm - np.nanmean(xm, 0)) / np.where(np.nanstd(xm, 0) > 0, np.nanstd(xm, 0), 1)
            pos = cells["cycle_position"].to_numpy(float)
            mat = np.stack([_binned(pos, z[:, j], n_bins)[1] for j in range(z.shape[1])])
            show = min(len(names), 20)
            order = np.argsort(-np.nanstd(mat, 1))[:show]
            im = ax.imshow(mat[order], aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_yticks(range(len(order)), [names[i].removeprefix("morph_") for i in order], fontsize=7)
            fig.colorbar(im, ax=ax, label="mean z-score")
        ax.set_xticks(range(n_bins), [f"{(b + 0.5) / n_bins:.2f}" for b in range(n_bins)])
        ax.set_title("No nucleus images (morphology from tables): features along the RNA cell-cycle position")
        ax.set_xlabel("RNA cell-cycle position (bin centre, fraction of the cycle)")
        ax.set_ylabel("morphology feature")
        caption = ("No crops or generated images exist for this cohort, so the strip shows the mean standardised "
                   "morphology features per bin of the RNA cell-cycle position instead.")
    else:
        rows = images["rows"]
        fig, axes = plt.subplots(len(rows), n_bins, figsize=(1.4 * n_bins, 1.6 * len(rows) + 0.9), squeeze=False)
        for r, (label, row) in enumerate(rows):
            shown = [im for im in row if im is not None]  # one intensity scale per row
            lo, hi = np.percentile(np.concatenate([im.ravel() for im in shown]), [1, 99.8]) if shown else (0, 1)
            for b in range(n_bins):
                ax = axes[r, b]
                im = row[b]
                if im is not None:
                    ax.imshow(np.clip((im - lo) / (hi - lo + 1e-9), 0, 1), cmap="gray", vmin=0, vmax=1)
                    cell = images["cells"][b]
                    if r == 0:
                        ax.set_title(f"{images['centres'][b] / TWO_PI:.2f}\n{cells.at[cell, 'phase_position']}",
                                     fontsize=8)
                    ax.set_aspect("equal")
                else:
                    ax.text(0.5, 0.5, "no cell", ha="center", va="center", transform=ax.transAxes, fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
                if b == 0:
                    ax.set_ylabel(label, fontsize=8)
        which = ("COSMIC-generated nuclei (decoded from RNA, held-out cells)" if images["source"] == "generated"
                 else "Observed nuclei (DNA channel crops)")
        fig.suptitle(f"{which} ordered by RNA cell-cycle position", fontsize=11)
        fig.supxlabel("RNA cell-cycle position (fraction of the cycle) and RNA phase of the cell shown", fontsize=9)
        caption = (f"{which}: cells sorted by RNA cell-cycle position and split into {n_bins} equal-count groups; "
                   "the median cell of each group is shown (DNA channel, one intensity scale per row)."
                   + (" Second row: the same cells' observed crops." if len(rows) > 1 else ""))
    save_figure(fig, figdir / "nuclei_along_cycle.png")
    _caption(figdir, "nuclei_along_cycle", caption)
