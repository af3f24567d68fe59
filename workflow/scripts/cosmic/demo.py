"""Embedded IRIS-like demo dataset with known ground truth.

One latent state per cell drives both modalities the way biology does, and each modality
also carries private variation the other cannot explain:

shared state (drives images *and* transcriptome)
    cell type (luminal / basal / neuroendocrine), continuous cell-cycle position, a continuous
    chromatin-compaction program ``z_shared``, treatment, and, in treated cells, the response
    (responsive cells arrest in mitosis, slip into polyploidy, grow lobed nuclei with micronuclei).
RNA-private
    library size, a 3-dimensional expression program ``z_rna``, mitochondrial load, and the
    resistance state of *untreated* cells (resistance genes are expressed, but untreated
    nuclei do not show it).
morphology-private
    nuclear elongation and orientation, boundary irregularity, the chromatin texture pattern,
    staining efficiency, optics (blur, background, noise).

The generator writes, per sample, multi-channel OME-TIFF fields of view (DAPI + CellMask),
the true label masks, a 10x-style count matrix folder, and a pairing table (barcode -> image
and recorded nucleus position); plus a ground-truth table per nucleus, a gene table saying
which program drives each gene and its oracle ceiling, the morphology-feature ceilings and
the totals. Oracle ceilings are Monte Carlo estimates of the fraction of variance that the
true shared state explains (``1 - E[Var(y | shared)] / Var(y)``), in the spaces later stages
score in: log-normalised expression (``normalize_total`` to 1e4 + ``log1p``) and region-
property features measured on the true masks.
"""

from __future__ import annotations

import gzip
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
import tifffile
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon
from tqdm.auto import tqdm

from .atomic import atomic_path, write_json

RESOURCES = Path(__file__).resolve().parents[3] / "resources"

CELL_TYPES = ("luminal", "basal", "neuroendocrine")
CHANNEL_NAMES = ("DAPI", "CellMask")
# Phase boundaries on the cycle position in [0, 1).
PHASE_BOUNDS = (("G1", 0.0, 0.5), ("S", 0.5, 0.8), ("G2", 0.8, 0.95), ("M", 0.95, 1.0))

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

# Per cell type: nuclear area (px, early G1), aspect ratio, chromatin grain (px), texture contrast,
# and the probability of being intrinsically resistant.
TYPE_MORPHOLOGY = {
    "luminal": dict(area=420.0, aspect=1.25, grain=2.0, contrast=0.25, p_resistant=0.25),
    "basal": dict(area=560.0, aspect=1.6, grain=3.5, contrast=0.35, p_resistant=0.5),
    "neuroendocrine": dict(area=300.0, aspect=1.08, grain=1.2, contrast=0.5, p_resistant=0.4),
}
TYPE_PROPORTIONS = (0.5, 0.3, 0.2)
DAPI_DENSITY = 1200.0  # photons per px of a 2N nucleus of reference area
REFERENCE_AREA = 450.0


@dataclass
class DemoSettings:
    """Size and randomness of the demo dataset (``demo_dataset`` block of the config)."""

    seed: int = 7
    samples: dict = field(default_factory=lambda: {"demo_control": "control",
                                                   "demo_docetaxel": "docetaxel"})
    cells_per_sample: int = 1000
    uncaptured_fraction: float = 0.02
    nuclei_per_image: int = 100
    image_size: int = 1024
    touching_fraction: float = 0.15
    median_library_size: float = 5000.0
    oracle_replicates: int = 4

    @classmethod
    def from_config(cls, block: dict | None) -> "DemoSettings":
        block = dict(block or {})
        if "samples" in block:
            block["samples"] = {s["sample"]: s["treatment"] for s in block["samples"]}
        unknown = set(block) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown demo_dataset keys: {sorted(unknown)}")
        return cls(**block)

    def nuclei_per_sample(self) -> int:
        return self.cells_per_sample + int(round(self.cells_per_sample * self.uncaptured_fraction))


def image_names(settings: DemoSettings) -> dict[str, list[str]]:
    """The image names of every demo sample, known before anything is generated."""
    n_images = math.ceil(settings.nuclei_per_sample() / settings.nuclei_per_image)
    return {s: [f"fov_{i:03d}" for i in range(n_images)] for s in settings.samples}


def sample_paths(outdir, sample: str) -> dict[str, Path]:
    """Where the generator writes one sample's inputs (mirrors a user's raw-data folder)."""
    base = Path(outdir) / sample
    return {
        "images": base / "images",
        "truth_masks": base / "truth_masks",
        "counts": base / "counts",
        "pairing": base / "pairing.tsv",
        "annotations": base / "annotations.tsv",
    }


def sample_sheet(settings: DemoSettings, outdir) -> pd.DataFrame:
    """The sample sheet describing the demo samples (same columns as ``config/samples.tsv``)."""
    rows = []
    for sample, treatment in settings.samples.items():
        paths = sample_paths(outdir, sample)
        rows.append({
            "sample": sample, "images": str(paths["images"]), "counts": str(paths["counts"]),
            "pairing": str(paths["pairing"]), "annotations": str(paths["annotations"]),
            "condition": treatment, "cell_line": "demo_prostate",
            "treatment": treatment, "response": "mixed",
        })
    return pd.DataFrame(rows)


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


# ---------------------------------------------------------------------------------------------
# Latent cell states
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Nuclei rendering
# ---------------------------------------------------------------------------------------------

@dataclass
class RenderedNucleus:
    mask: np.ndarray      # bool, patch-local
    density: np.ndarray   # float32 DNA signal (photons before blur), includes micronuclei
    cytoplasm: np.ndarray  # float32 CellMask signal
    centre: tuple[float, float]  # patch-local (row, col) of the nucleus centre
    n_micronuclei: int


def nucleus_area(row) -> float:
    """True nuclear area (px) from the shared state: type, G1 growth, DNA content, chromatin, drug."""
    morph = TYPE_MORPHOLOGY[row["cell_type"]]
    g1_growth = 0.85 + 0.15 * min(row["cycle_position"] / 0.5, 1.0)
    area = morph["area"] * g1_growth * (row["dna_content"] / 2.0) ** (2.0 / 3.0)
    area *= math.exp(0.12 * row["z_shared"]) * row["size_noise"]
    if row["treatment"] != "control" and not row["resistant"]:
        area *= 1.25
    if row["phase"] == "M":
        area *= 0.6  # condensed chromatin
    return area


def render_nucleus(row, rng: np.random.Generator) -> RenderedNucleus:
    """Draw one nucleus: shape and texture from its state, private details from ``rng``."""
    morph = TYPE_MORPHOLOGY[row["cell_type"]]
    mitotic = row["phase"] == "M"
    damaged = row["treatment"] != "control" and not row["resistant"]
    area = nucleus_area(row)
    aspect = morph["aspect"] * math.exp(0.12 * row["z_elongation"])
    a = math.sqrt(area / math.pi * aspect)
    b = math.sqrt(area / math.pi / aspect)
    angle = rng.uniform(0, math.pi)
    phi = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    radius = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    roughness = 0.08 if mitotic else 0.03
    harmonics = np.ones_like(phi)
    for k in range(2, 7):
        harmonics += rng.normal(0, roughness / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    if damaged:  # lobed nucleus
        lobes = rng.integers(2, 5)
        harmonics += 0.16 * np.cos(lobes * phi + rng.uniform(0, 2 * math.pi))
    radius = radius * np.clip(harmonics, 0.6, 1.5)
    reach = float(radius.max())
    n_micro = int(rng.poisson(1.2)) if damaged else 0
    half = int(math.ceil(reach * 1.9)) + 6
    size = 2 * half + 1
    cy, cx = half + rng.uniform(-0.5, 0.5), half + rng.uniform(-0.5, 0.5)
    rows = cy + radius * np.sin(phi + angle)
    cols = cx + radius * np.cos(phi + angle)
    mask = np.zeros((size, size), bool)
    rr, cc = draw_polygon(rows, cols, shape=mask.shape)
    mask[rr, cc] = True
    if not mask.any():  # degenerate shape: fall back to the centre pixel
        mask[half, half] = True

    # Chromatin: smoothed noise at the type's grain, contrast modulated by the shared program.
    contrast = morph["contrast"] * math.exp(0.25 * row["z_shared"]) * (1.8 if mitotic else 1.0)
    grain = morph["grain"] * (0.7 if mitotic else 1.0)
    noise = ndi.gaussian_filter(rng.standard_normal(mask.shape), grain)
    noise /= noise[mask].std() + 1e-9
    texture = np.clip(1.0 + contrast * noise, 0.05, None) * mask
    total_signal = DAPI_DENSITY * REFERENCE_AREA * row["dna_content"] / 2.0 * row["stain_efficiency"]
    density = (texture * (total_signal / texture.sum())).astype(np.float32)

    for _ in range(n_micro):
        theta = rng.uniform(0, 2 * math.pi)
        dist = reach + rng.uniform(3.0, 7.0)
        my, mx = cy + dist * math.sin(theta), cx + dist * math.cos(theta)
        yy, xx = np.ogrid[:size, :size]
        disc = (yy - my) ** 2 + (xx - mx) ** 2 <= rng.uniform(1.8, 3.0) ** 2
        density[disc & ~mask] += DAPI_DENSITY * 1.5

    yy, xx = np.ogrid[:size, :size]
    cell_radius = 1.9 * math.sqrt(area / math.pi)
    cytoplasm = (((yy - cy) ** 2 + (xx - cx) ** 2) <= cell_radius ** 2).astype(np.float32)
    cytoplasm *= 250.0 * math.exp(0.2 * rng.standard_normal())
    return RenderedNucleus(mask, density, cytoplasm, (cy, cx), n_micro)


def form_image(dna: np.ndarray, cytoplasm: np.ndarray, rng: np.random.Generator,
               blur_sigma: float) -> np.ndarray:
    """Optics and camera: blur, uneven background, shot and read noise -> uint16 C x Y x X."""
    h, w = dna.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    vignette = 1.0 - 0.45 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 2
    gy, gx = rng.uniform(-0.35, 0.35, size=2)
    illumination = (vignette * (1 + gy * (yy - 0.5) + gx * (xx - 0.5))).astype(np.float32)
    channels = []
    for signal, background, psf in ((dna, 220.0, blur_sigma), (cytoplasm, 150.0, blur_sigma * 3)):
        expected = ndi.gaussian_filter(signal, psf) * illumination + background * illumination
        photons = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
        photons += rng.normal(0.0, 12.0, size=photons.shape).astype(np.float32)
        channels.append(np.clip(photons, 0, 65535).astype(np.uint16))
    return np.stack(channels)


def _paste(canvas, patch, top, left):
    canvas[top:top + patch.shape[0], left:left + patch.shape[1]] += patch


def _footprint(labels, mask, top, left):
    """Labels under ``mask`` placed at (top, left); None if it leaves the canvas."""
    h, w = mask.shape
    if top < 0 or left < 0 or top + h > labels.shape[0] or left + w > labels.shape[1]:
        return None
    return labels[top:top + h, left:left + w][mask]


def compose_field(states: pd.DataFrame, rng: np.random.Generator, size: int,
                  touching_fraction: float):
    """Place the nuclei of one field of view; some deliberately touch a neighbour.

    Returns the image (C x Y x X uint16), the true label mask, and per-nucleus
    (label, centroid row, centroid col, true area, micronuclei) records.
    """
    labels = np.zeros((size, size), np.int32)
    dna = np.zeros((size, size), np.float32)
    cyto = np.zeros((size, size), np.float32)
    placed: list[tuple[float, float, float]] = []  # centre row, col, reach
    records = []
    for label, (_, row) in enumerate(states.iterrows(), start=1):
        nuc = render_nucleus(row, rng)
        h, w = nuc.mask.shape
        reach = math.sqrt(nuc.mask.sum() / math.pi) * 1.3
        spot = None
        if placed and rng.random() < touching_fraction:
            # Slide towards a placed neighbour until the masks would overlap, then step back.
            ny, nx, nreach = placed[rng.integers(len(placed))]
            theta = rng.uniform(0, 2 * math.pi)
            last_free = None
            for dist in np.arange(nreach + reach + 4, 0, -1.0):
                top = int(round(ny + dist * math.sin(theta) - nuc.centre[0]))
                left = int(round(nx + dist * math.cos(theta) - nuc.centre[1]))
                under = _footprint(labels, nuc.mask, top, left)
                if under is None:
                    last_free = None
                elif (under > 0).any():
                    spot = last_free  # the closest position that does not overlap: touching
                    break
                else:
                    last_free = (top, left)
        if spot is None:
            grown = ndi.binary_dilation(nuc.mask, iterations=5)
            for _ in range(200):
                top = int(rng.integers(2, size - h - 2))
                left = int(rng.integers(2, size - w - 2))
                under = _footprint(labels, grown, top, left)
                if under is not None and not (under > 0).any():
                    spot = (top, left)
                    break
        if spot is None:
            raise RuntimeError("demo field of view too crowded: lower nuclei_per_image or raise image_size")
        top, left = spot
        window = labels[top:top + h, left:left + w]
        window[nuc.mask & (window == 0)] = label
        _paste(dna, nuc.density, top, left)
        _paste(cyto, nuc.cytoplasm, top, left)
        rr, cc = np.nonzero(window == label)
        records.append((label, top + rr.mean(), left + cc.mean(), int(rr.size), nuc.n_micronuclei))
        placed.append((top + nuc.centre[0], left + nuc.centre[1], reach))
    image = form_image(dna, cyto, rng, blur_sigma=float(rng.uniform(1.0, 1.8)))
    return image, labels, records


def write_ome_tiff(path, image_cyx: np.ndarray, uid: str) -> None:
    """OME-TIFF with channel names; the OME UUID derives from ``uid`` so files are reproducible."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image_cyx, ome=True, photometric="minisblack", compression="zlib",
                         metadata={"axes": "CYX", "Channel": {"Name": list(CHANNEL_NAMES)},
                                   "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, uid))})


def write_mask(path, labels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(np.uint16), compression="zlib")


# ---------------------------------------------------------------------------------------------
# Transcriptome
# ---------------------------------------------------------------------------------------------

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
    return sorted(out, key=lambda _: rng.random())


# ---------------------------------------------------------------------------------------------
# Oracle ceilings
# ---------------------------------------------------------------------------------------------

def _redraw_rna_private(states: pd.DataFrame, rng: np.random.Generator,
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
        log_normalise(sample_counts(_redraw_rna_private(states, rng, library_median), genes, rng))
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
    from .imageio import ImageData
    from .nuclei import measure_nuclei

    image = ImageData(pixels=image_cyx.astype(np.float32), channel_names=list(CHANNEL_NAMES),
                      dna_index=0, path="<demo oracle>")
    return measure_nuclei(labels, image, image_name="oracle", sample="oracle")


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def generate(settings: DemoSettings, outdir, measure=workflow_measure, progress: bool = True) -> dict:
    """Generate the whole demo dataset under ``outdir``; return the oracle summary.

    Writes per sample (see ``sample_paths``) images, true masks, a 10x matrix folder, a
    pairing table and per-cell annotations (the measured response of treated cells); and, shared: ``samples.tsv``, ``ground_truth.tsv``, ``genes.tsv``,
    ``morphology_oracle.tsv``, ``morphology_traits.tsv`` and ``oracle.json``.
    """
    outdir = Path(outdir)
    rng = np.random.default_rng(settings.seed)
    genes = build_gene_table(rng)
    names = image_names(settings)
    truth_tables = []
    for sample, treatment in settings.samples.items():
        paths = sample_paths(outdir, sample)
        n_nuclei = settings.nuclei_per_sample()
        states = draw_cell_states(rng, sample, treatment, n_nuclei, settings.median_library_size)
        states["image"] = np.repeat(names[sample], settings.nuclei_per_image)[:n_nuclei]
        captured = np.zeros(n_nuclei, bool)
        captured[rng.permutation(n_nuclei)[: settings.cells_per_sample]] = True
        states["captured"] = captured
        columns = {k: [] for k in ("true_label", "centroid_y", "centroid_x", "true_area", "n_micronuclei")}
        for image in tqdm(names[sample], desc=f"demo {sample}: images", disable=not progress):
            in_field = states["image"] == image
            pixels, labels, records = compose_field(states[in_field], rng, settings.image_size,
                                                    settings.touching_fraction)
            write_ome_tiff(paths["images"] / f"{image}.ome.tif", pixels,
                           uid=f"cosmic-demo/{settings.seed}/{sample}/{image}")
            write_mask(paths["truth_masks"] / f"{image}.tif", labels)
            for key, values in zip(columns, zip(*records)):
                columns[key].extend(values)
        for key, values in columns.items():
            states[key] = values
        barcodes = random_barcodes(rng, settings.cells_per_sample)
        states["barcode"] = None
        states.loc[captured, "barcode"] = barcodes
        cells = states[captured]
        counts = sample_counts(cells, genes, rng)
        write_10x_mtx(paths["counts"], counts, barcodes, genes)
        # IRIS records where each barcoded cell sits; the position is measured, hence jittered.
        pairing = pd.DataFrame({
            "barcode": barcodes,
            "image": cells["image"].to_numpy(),
            "y": cells["centroid_y"].to_numpy() + rng.normal(0, 1.0, len(cells)),
            "x": cells["centroid_x"].to_numpy() + rng.normal(0, 1.0, len(cells)),
        })
        with atomic_path(paths["pairing"]) as tmp:
            pairing.to_csv(tmp, sep="\t", index=False, float_format="%.2f")
        # The response an experiment records per treated cell (e.g. a viability or proliferation
        # reporter read after treatment); untreated cells have none.
        annotations = pd.DataFrame({
            "barcode": barcodes,
            "response": np.where(cells["treatment"].to_numpy() == "control", "untreated",
                                 cells["response"].to_numpy()),
        })
        with atomic_path(paths["annotations"]) as tmp:
            annotations.to_csv(tmp, sep="\t", index=False)
        truth_tables.append(states)

    truth = pd.concat(truth_tables, ignore_index=True)
    truth.insert(0, "nucleus_uid", truth["sample"] + ":" + truth["image"] + ":" + truth["true_label"].astype(str))

    rng_oracle = np.random.default_rng([settings.seed, 1])
    captured = truth[truth["captured"]].reset_index(drop=True)
    gene_r2, gene_var = rna_oracle(captured, genes, rng_oracle, settings.oracle_replicates,
                                  settings.median_library_size)
    genes["oracle_r2"] = gene_r2
    genes["oracle_variance"] = gene_var
    morph = morphology_oracle(captured, rng_oracle, settings.oracle_replicates, measure)
    finite = np.isfinite(gene_r2) & (gene_var > 0)
    summary = {
        "definition": "fraction of variance explained by the true shared state, 1 - E[Var(y|shared)]/Var(y), "
                      "Monte Carlo over private variation; expression in log1p(normalize_total 1e4) space, "
                      "morphology as region-property features on the true masks",
        "replicates": settings.oracle_replicates,
        "rna_total_oracle_r2": float(np.sum(gene_r2[finite] * gene_var[finite]) / np.sum(gene_var[finite])),
        "morphology_total_oracle_r2_standardised": float(np.nanmean(morph["oracle_r2"])),
        "n_cells": int(truth["captured"].sum()),
        "n_nuclei": int(len(truth)),
        "n_genes": int(len(genes)),
    }
    with atomic_path(outdir / "ground_truth.tsv") as tmp:
        truth.to_csv(tmp, sep="\t", index=False)
    with atomic_path(outdir / "genes.tsv") as tmp:
        genes.to_csv(tmp, sep="\t", index=False)
    with atomic_path(outdir / "morphology_oracle.tsv") as tmp:
        morph.to_csv(tmp, sep="\t", index=False)
    with atomic_path(outdir / "morphology_traits.tsv") as tmp:
        morphology_traits().to_csv(tmp, sep="\t", index=False)
    write_json(outdir / "oracle.json", summary)
    with atomic_path(outdir / "samples.tsv") as tmp:
        sample_sheet(settings, outdir).to_csv(tmp, sep="\t", index=False)
    return summary


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
