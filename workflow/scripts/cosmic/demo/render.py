"""Nuclei rendering: shape and chromatin of each nucleus, fields of view, optics, and their files."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon

from ..atomic import atomic_path
from .states import TYPE_MORPHOLOGY

CHANNEL_NAMES = ("DAPI", "CellMask")
DAPI_DENSITY = 1200.0  # photons per px of a 2N nucleus of reference area
REFERENCE_AREA = 450.0


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
