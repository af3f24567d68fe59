"""Image-space features of single-nucleus crops, the same way for real and generated crops.

Generated nuclei are judged as images: (a) re-encoded by the foundation encoder
(:func:`cosmic.foundation.embed_array`) and (b) measured with the project's own region-property
extractor (:func:`cosmic.nuclei.measure_nuclei`, the ``morph_*`` columns of ``nuclei.parquet``)
on the crop's central nucleus, segmented from the crop itself (:func:`segment_crop_nucleus`).
Real crops go through exactly the same path, so a blurry blob and a realistic nucleus score
differently and both are measured without the original image or mask.

Measurement is batched: :func:`measure_crops` lays up to ``batch_size`` crops out as tiles of
one mosaic image and calls :func:`~cosmic.nuclei.measure_nuclei` once per mosaic, one label
per crop. Everything a feature depends on stays inside its tile (see :func:`measure_crops`), so
a crop gives the same numbers alone or in any batch.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from ..errors import CosmicInputError
from ..nuclei import NucleiParams, feature_columns, measure_nuclei
from ..segmentation_size import FALLBACK_DIAMETER

__all__ = ["segment_crop_nucleus", "measure_crops", "image_space_features", "SMOOTHING_SIGMA", "TILE_GAP"]

SMOOTHING_SIGMA = 1.0
"""Gaussian smoothing (px) of the DNA channel before the Otsu threshold."""
TILE_GAP = 2
"""Pixels between the tiles of a measurement mosaic (intensity 0, guard labels)."""


# ---------------------------------------------------------------------------------------
# segmentation of the central nucleus
def _centre(shape) -> tuple[int, int]:
    """The pixel a crop is centred on: :func:`cosmic.nuclei.extract_crops` puts the nucleus
    centroid (floored) at index ``S // 2``."""
    return shape[0] // 2, shape[1] // 2


def _components(dna: np.ndarray, sigma: float = SMOOTHING_SIGMA) -> tuple[np.ndarray, int]:
    """Foreground components of a DNA crop (smoothed, Otsu, holes filled; int32 labels 1..k,
    0 = background) and the label of the central one (0 when the crop is blank/constant)."""
    dna = np.nan_to_num(np.asarray(dna, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if dna.ndim != 2:
        raise CosmicInputError(f"segment_crop_nucleus: expected a Y x X DNA crop, got shape {dna.shape}")
    empty = np.zeros(dna.shape, dtype=np.int32)
    if dna.size == 0 or np.ptp(dna) <= 0:
        return empty, 0
    smooth = ndi.gaussian_filter(dna, sigma, mode="nearest") if sigma > 0 else dna
    if np.ptp(smooth) <= 0:
        return empty, 0
    fg = ndi.binary_fill_holes(smooth > threshold_otsu(smooth))
    comps, n = ndi.label(fg)
    if n == 0:
        return empty, 0
    cy, cx = _centre(dna.shape)
    central = int(comps[cy, cx])
    if central == 0:  # the component nearest to the centre
        _, (iy, ix) = ndi.distance_transform_edt(comps == 0, return_indices=True)
        central = int(comps[iy[cy, cx], ix[cy, cx]])
    return comps.astype(np.int32, copy=False), central


def segment_crop_nucleus(dna: np.ndarray, sigma: float = SMOOTHING_SIGMA) -> np.ndarray:
    """Label mask (S x S int32: 1 = the nucleus, 0 elsewhere) of the central nucleus of a crop.

    The DNA channel is lightly smoothed (Gaussian, ``sigma`` px), thresholded by Otsu's method
    and its holes filled; the connected component containing the crop centre (the pixel
    ``S // 2, S // 2`` where :func:`~cosmic.nuclei.extract_crops` puts the centroid), or the
    component nearest to it, is kept. A blank or constant crop gives an empty mask.
    Non-finite pixels count as 0.
    """
    comps, central = _components(dna, sigma)
    return (comps == central).astype(np.int32) if central else comps


# ---------------------------------------------------------------------------------------
# measurement
def _feature_names(names: Sequence[str], dna_channel: int, params: NucleiParams) -> list[str]:
    """The ``morph_*`` columns :func:`measure_nuclei` gives for these channels (from its
    empty table, which has the columns of a non-empty one)."""
    proto = SimpleNamespace(pixels=np.zeros((len(names), 8, 8), np.float32), channel_names=list(names),
                            dna_index=dna_channel)
    return feature_columns(measure_nuclei(np.zeros((8, 8), np.int32), proto, "crops", None, params))


def _mosaic(crops: np.ndarray, dna_channel: int, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile ``B`` crops (B x C x S x S) into one image, ``TILE_GAP`` px of zeros between tiles.

    Labels: crop ``i``'s central nucleus is ``i + 1``. Every other pixel that must not enter a
    nucleus's background ring carries a guard label ``> B``: the gaps, and the other nuclei of
    each crop (as the neighbours of a nucleus are labelled in the whole image). One guard label
    per row of tiles (the gap above and beside it and its crops' other nuclei) keeps the guards'
    bounding boxes, and so their cost in :func:`measure_nuclei`, small. Returns pixels
    (C x H x W float32), labels and the per-crop ``found`` flags.
    """
    B, C, S = crops.shape[0], crops.shape[1], crops.shape[-1]
    cols = max(1, math.ceil(math.sqrt(B)))
    rows = math.ceil(B / cols)
    P, G = S + TILE_GAP, TILE_GAP
    H, W = G + rows * P, G + cols * P
    pixels = np.zeros((C, H, W), dtype=np.float32)
    guard = B + 1 + np.minimum(np.arange(H) // P, rows).astype(np.int32)
    labels = np.repeat(guard[:, None], W, axis=1)
    found = np.zeros(B, dtype=bool)
    for i in range(B):
        crop = np.nan_to_num(np.asarray(crops[i], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        comps, central = _components(crop[dna_channel], sigma)
        r, c = divmod(i, cols)
        y, x = G + r * P, G + c * P
        pixels[:, y:y + S, x:x + S] = crop
        tile = np.where(comps > 0, B + 1 + r, 0).astype(np.int32)
        if central:
            tile[comps == central] = i + 1
            found[i] = True
        labels[y:y + S, x:x + S] = tile
    return pixels, labels, found


def _measure_batch(crops, dna_channel, names, params, diameter, sigma, columns) -> tuple[np.ndarray, np.ndarray]:
    """B x F features of one batch of crops (NaN rows where no nucleus was found) and ``found``."""
    B = len(crops)
    out = np.full((B, len(columns)), np.nan)
    pixels, labels, found = _mosaic(crops, dna_channel, sigma)
    if not found.any():
        return out, found
    image = SimpleNamespace(pixels=pixels, channel_names=list(names), dna_index=dna_channel)
    table = measure_nuclei(labels, image, "mosaic", None, params, nucleus_diameter=diameter)
    lab = table["label"].to_numpy(dtype=np.int64)
    keep = lab <= B  # drop the guard labels
    out[lab[keep] - 1] = table.loc[keep, columns].to_numpy(dtype=np.float64)
    return out, found


def _check_crops(crops, dna_channel: int) -> np.ndarray:
    if not hasattr(crops, "shape") or not hasattr(crops, "ndim"):
        crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[2] != crops.shape[3]:
        raise CosmicInputError(f"measure_crops: expected N x C x S x S crops, got shape {tuple(crops.shape)}")
    if not 0 <= int(dna_channel) < crops.shape[1]:
        raise CosmicInputError(f"measure_crops: DNA channel {dna_channel} is not one of the "
                               f"{crops.shape[1]} channels of the crops")
    return crops


def measure_crops(crops, dna_channel: int = 0, nuclei_params: NucleiParams | Mapping | None = None, *,
                  nucleus_diameter: float | None = None, channel_names: Sequence[str] | None = None,
                  batch_size: int = 256, sigma: float = SMOOTHING_SIGMA) -> pd.DataFrame:
    """Region properties of the central nucleus of each crop: one row per crop, in crop order.

    ``crops``: N x C x S x S (a crop bank, memory-mapped or not, or generated crops; any float
    dtype, non-finite pixels count as 0). Each crop's central nucleus is segmented with
    :func:`segment_crop_nucleus` and measured by :func:`cosmic.nuclei.measure_nuclei` with
    ``nuclei_params`` (texture settings, ``background_ring_width``), so the columns are the
    ``morph_*`` columns of ``nuclei.parquet``: shape (area, perimeter, eccentricity, solidity,
    extent, axis lengths, form factor), DNA intensity (background-subtracted integrated and
    mean, SD, skewness, kurtosis, CV, quantiles, radial distribution), GLCM texture, and the
    mean of every other channel (``morph_<channel_names[i]>_mean``, default names ``ch<i>``),
    followed by ``found`` (False, with NaN features, where no nucleus was found: a blank crop).

    Up to ``batch_size`` crops are tiled into one mosaic and measured in one call. Every
    background- and contrast-related quantity is computed inside the crop's tile: the local DNA
    background (the median of a ring 2 .. 2 + ring width px around the nucleus, which
    ``morph_dna_integrated``, ``_mean``, ``_cv``, ``_q*`` and ``_radial_*`` subtract) only
    takes pixels of its own tile that are nearer to the nucleus than to the tile's edge or to
    another nucleus of the crop. It can therefore differ from the same nucleus's row in
    ``nuclei.parquet``, measured on the whole image. (Only for a nucleus with no background
    pixel in its ring does the background fall back to the median of the batch's background,
    as :func:`measure_nuclei` falls back to the image's.) The ring width is
    ``nuclei_params.background_ring_width``, or half of ``nucleus_diameter`` (at least 4 px);
    ``nucleus_diameter`` defaults to 30 px (``FALLBACK_DIAMETER``), not to the batch's
    median, so that a crop's numbers do not depend on the other crops: pass the
    segmentation's ``nucleus_diameter`` to match the nuclei tables of a run.
    """
    crops = _check_crops(crops, dna_channel)
    dna_channel = int(dna_channel)
    if not isinstance(nuclei_params, NucleiParams):
        nuclei_params = NucleiParams.from_config(nuclei_params)
    if int(batch_size) < 1:
        raise CosmicInputError(f"measure_crops: batch_size must be >= 1, got {batch_size!r}")
    C = crops.shape[1]
    names = list(channel_names) if channel_names is not None else [f"ch{i}" for i in range(C)]
    if len(names) != C:
        raise CosmicInputError(f"measure_crops: {len(names)} channel names for {C} channels")
    diameter = float(nucleus_diameter) if nucleus_diameter is not None else FALLBACK_DIAMETER
    columns = _feature_names(names, dna_channel, nuclei_params)
    N, bs = crops.shape[0], int(batch_size)
    feats = np.full((N, len(columns)), np.nan)
    found = np.zeros(N, dtype=bool)
    for a in range(0, N, bs):
        feats[a:a + bs], found[a:a + bs] = _measure_batch(crops[a:a + bs], dna_channel, names, nuclei_params,
                                                          diameter, sigma, columns)
    table = pd.DataFrame(feats, columns=columns)
    table["found"] = found
    return table


def image_space_features(crops, dna_channel: int = 0, foundation_model=None, *,
                         nuclei_params: NucleiParams | Mapping | None = None,
                         nucleus_diameter: float | None = None, channel_names: Sequence[str] | None = None,
                         batch_size: int = 256) -> dict:
    """Both image-space views of a set of crops (real, or generated by
    :func:`cosmic.foundation.decode_embeddings`), computed the same way for either:

    ``properties``: the region properties of :func:`measure_crops` (``morph_*`` + ``found``);
    ``embedding``: N x D float32 foundation embeddings of the crops
    (:func:`cosmic.foundation.embed_array`), or None without ``foundation_model``.
    """
    props = measure_crops(crops, dna_channel, nuclei_params, nucleus_diameter=nucleus_diameter,
                          channel_names=channel_names, batch_size=batch_size)
    emb = None
    if foundation_model is not None:
        from ..foundation import embed_array

        emb = embed_array(foundation_model, crops, batch_size=batch_size)
    return {"properties": props, "embedding": emb}
