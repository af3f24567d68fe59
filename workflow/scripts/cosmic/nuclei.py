"""Per-nucleus table (QC flags + morphology features) and the single-nucleus crop bank.

Outputs of the ``nuclei`` stage for one sample:

- ``nuclei.parquet``: one row per nucleus, in crop-bank order (``crop_index``). Identity
  columns (``nucleus_id``, ``sample``, ``image``, ``label``), position (``centroid_*``,
  ``bbox_*``), local background (``dna_background``), QC flags (``qc_*``) and morphology
  features, all prefixed ``morph_`` so downstream code can select them.
- ``crops.npy``: float16 N x C x S x S, readable with ``np.load(..., mmap_mode="r")``.

DNA intensities are background-subtracted with a local estimate (median of a ring of
background pixels around each nucleus), so ``morph_dna_integrated`` is proportional to
DNA content (for a stoichiometric DNA stain).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import measure, segmentation
from skimage.feature import graycomatrix, graycoprops

from .atomic import atomic_path
from .errors import CosmicInputError, describe, require_flag

__all__ = [
    "NucleiParams",
    "CropParams",
    "NORMALIZATIONS",
    "measure_nuclei",
    "extract_crops",
    "build_nuclei_outputs",
    "feature_columns",
]

NORMALIZATIONS = ("percentile", "zscore", "none")
TEXTURE_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "entropy")
N_RADIAL = 4
_FLOAT16_MAX = float(np.finfo(np.float16).max)


# ---------------------------------------------------------------------------------------
# parameters
def _num(name, v, *, allow_none=False, minimum=0.0, strict=False, integer=False):
    if v is None and allow_none:
        return
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
    ok = ok and math.isfinite(v) and (v > minimum if strict else v >= minimum)
    if integer:
        ok = ok and float(v).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        rel = ">" if strict else ">="
        raise CosmicInputError(f"nuclei parameter {name} must be {kind} {rel} {minimum}, got {v!r}")


@dataclass
class CropParams:
    """How single-nucleus crops are cut."""

    crop_size: int = 64
    """Side S (px) of the square crops, centred on the nucleus centroid; zero-padded at borders."""
    mask_to_nucleus: bool = False
    """Zero every pixel outside the nucleus itself (neighbours and background)."""
    normalization: str = "percentile"
    """Per image and channel: 'percentile' maps the 1st..99.9th percentile to 0..1,
    'zscore' subtracts the mean and divides by the SD, 'none' keeps raw values."""

    def __post_init__(self):
        _num("crop_size", self.crop_size, minimum=2, integer=True)
        self.crop_size = int(self.crop_size)
        require_flag("nuclei", "mask_to_nucleus", self.mask_to_nucleus)
        if self.normalization not in NORMALIZATIONS:
            raise CosmicInputError(
                f"nuclei parameter normalization must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {self.normalization!r}"
            )


@dataclass
class NucleiParams:
    """The ``nuclei:`` config block: QC thresholds, feature settings and crop settings."""

    qc_min_area: float | None = None
    """Nuclei smaller than this (px) are flagged qc_too_small; default 0.25 x the area of a
    disk of the segmentation nucleus_diameter."""
    qc_max_area: float | None = None
    """Nuclei larger than this (px) are flagged qc_too_large; default 4 x that area."""
    qc_min_contrast: float = 3.0
    """Nuclei whose mean DNA intensity exceeds the local background by less than this many
    background-noise SDs are flagged qc_low_contrast."""
    background_ring_width: float | None = None
    """Width (px) of the ring around each nucleus whose median is its local background;
    default half a nucleus diameter (at least 4 px). The ring starts 2 px out."""
    texture_levels: int = 16
    """Grey levels of the co-occurrence matrix (texture features)."""
    texture_distances: list[int] = dataclasses.field(default_factory=lambda: [1, 3])
    """Pixel offsets of the co-occurrence matrices (averaged over 4 directions)."""
    crop_size: int = 64
    mask_to_nucleus: bool = False
    normalization: str = "percentile"

    def __post_init__(self):
        _num("qc_min_area", self.qc_min_area, allow_none=True)
        _num("qc_max_area", self.qc_max_area, allow_none=True, strict=True)
        _num("qc_min_contrast", self.qc_min_contrast, minimum=-math.inf)
        _num("background_ring_width", self.background_ring_width, allow_none=True, strict=True)
        _num("texture_levels", self.texture_levels, minimum=2, integer=True)
        self.texture_levels = int(self.texture_levels)
        dists = self.texture_distances
        if isinstance(dists, (int, np.integer)) and not isinstance(dists, bool):
            dists = [dists]
        if not isinstance(dists, (list, tuple)) or not dists:
            raise CosmicInputError(
                f"nuclei parameter texture_distances must be a non-empty list of positive integers, got {dists!r}"
            )
        for d in dists:
            _num("texture_distances", d, minimum=1, integer=True)
        self.texture_distances = [int(d) for d in dists]
        self.crop()  # validates the crop fields
        from .config import check_against_schema

        check_against_schema(self, "nuclei")  # the schema's ranges (e.g. crop_size >= 8)

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "NucleiParams":
        """Build from ``config["nuclei"]``; unknown keys are errors."""
        from .config import params_from_config

        return params_from_config(cls, "nuclei", mapping, **overrides)

    def crop(self) -> CropParams:
        return CropParams(self.crop_size, self.mask_to_nucleus, self.normalization)


# ---------------------------------------------------------------------------------------
# measurement
def _safe(name: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower()
    return s or "channel"


def _as_image(image):
    """Accept ImageData-like objects or a bare Y x X / C x Y x X array."""
    if hasattr(image, "pixels"):
        pixels = np.asarray(image.pixels)
        names = list(getattr(image, "channel_names", None) or [])
        dna_index = int(getattr(image, "dna_index", 0))
    else:
        pixels = np.asarray(image)
        names, dna_index = [], 0
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3:
        raise ValueError(f"expected C x Y x X pixels, got shape {pixels.shape}")
    if len(names) != pixels.shape[0]:
        names = [f"ch{i}" for i in range(pixels.shape[0])]
    return pixels, names, dna_index


def _other_channel_columns(names: list[str], dna_index: int) -> list[tuple[int, str]]:
    out, seen = [], {"dna"}
    for i, n in enumerate(names):
        if i == dna_index:
            continue
        col = _safe(n)
        while col in seen:
            col = f"{col}_{i}"
        seen.add(col)
        out.append((i, f"morph_{col}_mean"))
    return out


def _local_background(dna, labels, n, ring_width):
    """Per-label median of background pixels 2..2+ring_width px outside each nucleus, the
    image background level (median of all background pixels) where a ring is empty, and
    a robust SD of the background noise."""
    bg_pixels = dna[labels == 0]
    if bg_pixels.size:
        global_bg = float(np.median(bg_pixels))
        mad = float(np.median(np.abs(bg_pixels - global_bg))) * 1.4826
        noise = mad if mad > 0 else float(bg_pixels.std())
    else:
        global_bg, noise = float(np.percentile(dna, 1)), 0.0
    bg = np.full(n + 1, global_bg, dtype=np.float64)
    if n and bg_pixels.size:
        near = segmentation.expand_labels(labels, 2)
        ring = segmentation.expand_labels(labels, 2 + ring_width)
        ring[near > 0] = 0
        sel = ring > 0
        if sel.any():
            lab = ring[sel]
            vals = dna[sel]
            order = np.lexsort((vals, lab))
            lab, vals = lab[order], vals[order]
            uniq, start, counts = np.unique(lab, return_index=True, return_counts=True)
            mid_lo = vals[start + (counts - 1) // 2]
            mid_hi = vals[start + counts // 2]
            bg[uniq] = 0.5 * (mid_lo.astype(np.float64) + mid_hi)
    return bg, global_bg, max(noise, 1e-6)


def _texture(crop, mask, levels, distances):
    """GLCM features of the pixels inside ``mask`` (outside pixels are level 0, dropped)."""
    vals = crop[mask]
    out = np.zeros((len(distances), len(TEXTURE_PROPS)))
    if vals.size < 2:
        return out
    lo, hi = np.percentile(vals, [1, 99])
    if hi <= lo:
        return out
    q = np.clip((crop - lo) / (hi - lo), 0, 1)
    q = (q * (levels - 1)).astype(np.uint8) + 1
    q[~mask] = 0
    P = graycomatrix(q, distances=distances, angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                     levels=levels + 1, symmetric=True, normed=False)
    P = P[1:, 1:].astype(np.float64)
    sums = P.sum(axis=(0, 1), keepdims=True)
    valid = sums[0, 0] > 0
    P = np.divide(P, sums, out=np.zeros_like(P), where=sums > 0)
    for j, prop in enumerate(TEXTURE_PROPS):
        with np.errstate(all="ignore"):
            v = graycoprops(P, prop)  # n_dist x n_angle
        v = np.where(valid, v, np.nan)
        out[:, j] = np.nan_to_num(np.nanmean(v, axis=1) if valid.any() else 0.0, nan=0.0)
    return out


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The morphology feature columns of a nuclei table."""
    return [c for c in table.columns if c.startswith("morph_")]


def _checked_labels(labels, pixels: np.ndarray, image_name: str, sample) -> np.ndarray:
    """The label image, once it matches the image's shape and holds integers."""
    labels = np.asarray(labels)
    if labels.shape != pixels.shape[1:]:
        raise CosmicInputError(
            f"{describe(image_name, sample)}: mask shape {labels.shape} does not match image shape "
            f"{pixels.shape[1:]}; the mask was made from another image, re-run segmentation"
        )
    if labels.dtype.kind not in "iub":
        raise CosmicInputError(f"{describe(image_name, sample)}: mask must hold integer labels, got {labels.dtype}")
    return labels


def _dna_distribution(v: np.ndarray, m: np.ndarray, out: np.ndarray, n_q: int) -> None:
    """Fill ``out`` with one nucleus's DNA statistics: SD, skewness, excess kurtosis, CV, quantiles and
    the share of (positive) signal in :data:`N_RADIAL` shells, centre -> edge.

    ``v``: background-subtracted DNA values of the pixels of mask ``m`` (its bounding box).
    """
    mean = v.mean()
    dev = v - mean
    m2 = float(np.dot(dev, dev)) / v.size
    sd = math.sqrt(m2)
    out[0] = sd
    if v.size > 2 and m2 > 0:  # population skewness and excess kurtosis
        dev2 = dev * dev
        out[1] = float(np.dot(dev2, dev)) / v.size / m2**1.5
        out[2] = float(np.dot(dev2, dev2)) / v.size / m2**2 - 3.0
    out[3] = sd / mean if mean > 0 else 0.0
    out[4:4 + n_q] = np.percentile(v, [10, 50, 90])
    # radial distribution: share of (positive) DNA signal in 4 shells, centre -> edge
    depth = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1][m]
    shell = np.minimum(((1 - (depth - 1) / max(depth.max(), 1.0)) * N_RADIAL).astype(int), N_RADIAL - 1)
    w = np.clip(v, 0, None)
    tot = w.sum()
    if tot > 0:
        out[4 + n_q:] = np.bincount(shell, weights=w, minlength=N_RADIAL)[:N_RADIAL] / tot


def _per_nucleus_features(labels: np.ndarray, dna: np.ndarray, lab: np.ndarray, bg: np.ndarray,
                          params: NucleiParams, n_q: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-nucleus loop: DNA distribution (see :func:`_dna_distribution`) and GLCM texture."""
    extra = np.zeros((lab.size, 4 + n_q + N_RADIAL))
    tex = np.zeros((lab.size, len(params.texture_distances), len(TEXTURE_PROPS)))
    slices = ndi.find_objects(labels)
    for r, L in enumerate(lab):
        sl = slices[L - 1]
        m = labels[sl] == L
        crop = dna[sl]
        _dna_distribution(crop[m].astype(np.float64) - bg[r], m, extra[r], n_q)
        tex[r] = _texture(crop, m, params.texture_levels, params.texture_distances)
    return extra, tex


def _qc_flags(props: dict, area: np.ndarray, dna_mean: np.ndarray, shape: tuple[int, int], min_area: float,
              max_area: float, min_dna: float) -> dict[str, np.ndarray]:
    """The ``qc_*`` columns: touching the border, too small or large, too faint, and all passed."""
    H, W = shape
    y0, x0, y1, x1 = (props[f"bbox-{i}"].astype(np.int64) for i in range(4))
    qc_border = (y0 == 0) | (x0 == 0) | (y1 == H) | (x1 == W)
    qc_small = area < min_area
    qc_large = area > max_area
    qc_low = dna_mean < min_dna
    return {
        "qc_border": qc_border, "qc_too_small": qc_small, "qc_too_large": qc_large,
        "qc_low_contrast": qc_low,
        "qc_pass": ~(qc_border | qc_small | qc_large | qc_low),
    }


def _morphology_features(props: dict, area: np.ndarray, dna_mean: np.ndarray, extra: np.ndarray,
                         tex: np.ndarray, params: NucleiParams, n_q: int) -> dict[str, np.ndarray]:
    """The ``morph_*`` columns of the DNA channel: shape, intensity distribution, radial profile, texture."""
    perim = props["perimeter"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        form = np.where(perim > 0, 4 * math.pi * area / perim**2, 1.0)
    cols = {
        "morph_area": area,
        "morph_perimeter": perim,
        "morph_eccentricity": props["eccentricity"].astype(np.float64),
        "morph_solidity": props["solidity"].astype(np.float64),
        "morph_extent": props["extent"].astype(np.float64),
        "morph_major_axis_length": props["axis_major_length"].astype(np.float64),
        "morph_minor_axis_length": props["axis_minor_length"].astype(np.float64),
        "morph_form_factor": form,
        "morph_dna_integrated": dna_mean * area,
        "morph_dna_mean": dna_mean,
        "morph_dna_std": extra[:, 0],
        "morph_dna_skewness": extra[:, 1],
        "morph_dna_kurtosis": extra[:, 2],
        "morph_dna_cv": extra[:, 3],
        "morph_dna_q10": extra[:, 4],
        "morph_dna_q50": extra[:, 5],
        "morph_dna_q90": extra[:, 6],
    }
    for k in range(N_RADIAL):
        cols[f"morph_dna_radial_{k + 1}"] = extra[:, 4 + n_q + k]
    for i, d in enumerate(params.texture_distances):
        for j, prop in enumerate(TEXTURE_PROPS):
            cols[f"morph_texture_{prop}_d{d}"] = tex[:, i, j]
    return cols


def measure_nuclei(
    labels: np.ndarray,
    image,
    image_name: str,
    sample: str | None = None,
    params: NucleiParams | Mapping | None = None,
    nucleus_diameter: float | None = None,
) -> pd.DataFrame:
    """One row per label of ``labels`` with identity, position, QC flags and features.

    ``image`` is an :class:`~cosmic.imageio.ImageData` (or anything with ``pixels`` C x Y x X,
    ``channel_names`` and ``dna_index``; a bare array is taken as channel 0 = DNA).
    ``nucleus_diameter`` (the segmentation's) sets the QC area defaults and the background
    ring width; when None it is taken from the median nucleus area of this image.
    A label image with no nuclei gives an empty table with the same columns and dtypes.
    """
    if not isinstance(params, NucleiParams):
        params = NucleiParams.from_config(params)
    pixels, names, dna_index = _as_image(image)
    labels = _checked_labels(labels, pixels, image_name, sample)
    if labels.size == 0 or not labels.any():
        return _empty_table(names, dna_index, params)
    labels = labels.astype(np.int32, copy=False)
    dna = pixels[dna_index].astype(np.float32, copy=False)

    props = measure.regionprops_table(
        labels,
        intensity_image=np.moveaxis(pixels, 0, -1).astype(np.float32, copy=False),
        properties=("label", "centroid", "bbox", "area", "perimeter", "eccentricity", "solidity",
                    "extent", "axis_major_length", "axis_minor_length", "intensity_mean"),
    )
    lab = props["label"].astype(np.int64)
    n_rows = lab.size
    area = props["area"].astype(np.float64)
    if nucleus_diameter is None:
        nucleus_diameter = math.sqrt(4 * float(np.median(area)) / math.pi)
    disk = math.pi * (nucleus_diameter / 2) ** 2
    min_area = params.qc_min_area if params.qc_min_area is not None else 0.25 * disk
    max_area = params.qc_max_area if params.qc_max_area is not None else 4.0 * disk
    ring = params.background_ring_width or max(4.0, nucleus_diameter / 2)
    bg_all, _, noise = _local_background(dna, labels, int(labels.max()), ring)
    bg = bg_all[lab]
    dna_mean = props[f"intensity_mean-{dna_index}"].astype(np.float64) - bg
    n_q = 3  # DNA quantiles: 10, 50, 90
    extra, tex = _per_nucleus_features(labels, dna, lab, bg, params, n_q)

    sample_s = "" if sample is None else str(sample)
    cols: dict[str, Any] = {
        "nucleus_id": [f"{sample_s}:{image_name}:{int(L)}" for L in lab],
        "sample": pd.Series([sample_s] * n_rows, dtype=object),
        "image": pd.Series([str(image_name)] * n_rows, dtype=object),
        "label": lab,
        "centroid_y": props["centroid-0"].astype(np.float64),
        "centroid_x": props["centroid-1"].astype(np.float64),
        **{f"bbox_{name}": props[f"bbox-{i}"].astype(np.int64) for i, name in enumerate(("y0", "x0", "y1", "x1"))},
        "dna_background": bg.astype(np.float64),
    }
    cols.update(_qc_flags(props, area, dna_mean, labels.shape, min_area, max_area, params.qc_min_contrast * noise))
    cols.update(_morphology_features(props, area, dna_mean, extra, tex, params, n_q))
    for i, col in _other_channel_columns(names, dna_index):
        cols[col] = props[f"intensity_mean-{i}"].astype(np.float64)
    return pd.DataFrame(cols)


def _empty_table(names, dna_index, params) -> pd.DataFrame:
    """Zero-row table with exactly the columns/dtypes of a non-empty one."""
    yy, xx = np.mgrid[0:16, 0:16]
    lab = (((yy - 8) ** 2 + (xx - 8) ** 2) <= 16).astype(np.int32)
    pix = np.ones((len(names), 16, 16), dtype=np.float32)
    pix[:, lab > 0] = 2.0
    pix[:, 0, 0] = 0.0
    proto = _Proto(pix, names, dna_index)
    return measure_nuclei(lab, proto, "x", "x", params, nucleus_diameter=8.0).iloc[0:0].reset_index(drop=True)


@dataclass
class _Proto:
    pixels: np.ndarray
    channel_names: list
    dna_index: int


# ---------------------------------------------------------------------------------------
# crops
def _normaliser(pixels: np.ndarray, method: str):
    """Per-channel (offset, scale) so that (x - offset) * scale is normalised."""
    C = pixels.shape[0]
    off = np.zeros(C, dtype=np.float32)
    scale = np.ones(C, dtype=np.float32)
    if method == "none":
        return off, scale
    step = max(1, int(math.sqrt(pixels[0].size / 250_000)))
    for c in range(C):
        v = pixels[c, ::step, ::step]
        if method == "percentile":
            lo, hi = np.percentile(v, [1, 99.9])
            off[c], scale[c] = lo, 1.0 / (hi - lo) if hi > lo else 1.0
        else:  # zscore
            sd = float(v.std())
            off[c], scale[c] = float(v.mean()), 1.0 / sd if sd > 0 else 1.0
    return off, scale


def extract_crops(labels, pixels_cyx, table: pd.DataFrame, params: CropParams | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Cut an S x S crop around each row's centroid: float16, N x C x S x S, rows in table order.

    Rows of ``table`` must refer to ``labels`` (columns ``label``, ``centroid_y``,
    ``centroid_x``). Pixels outside the image are 0 (after normalisation). With
    ``out`` given (e.g. a slice of a memmap) crops are written there.
    """
    params = params or CropParams()
    pixels = np.asarray(pixels_cyx)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    C, H, W = pixels.shape
    S = params.crop_size
    n = len(table)
    if out is None:
        out = np.zeros((n, C, S, S), dtype=np.float16)
    if n == 0:
        return out
    off, scale = _normaliser(pixels, params.normalization)
    cy = np.floor(table["centroid_y"].to_numpy(dtype=np.float64)).astype(np.int64)
    cx = np.floor(table["centroid_x"].to_numpy(dtype=np.float64)).astype(np.int64)
    labs = table["label"].to_numpy(dtype=np.int64)
    half = S // 2
    buf = np.zeros((C, S, S), dtype=np.float32)
    for i in range(n):
        ya, xa = cy[i] - half, cx[i] - half
        yb, xb = ya + S, xa + S
        sy0, sx0 = max(ya, 0), max(xa, 0)
        sy1, sx1 = min(yb, H), min(xb, W)
        buf[:] = 0
        if sy1 > sy0 and sx1 > sx0:
            win = pixels[:, sy0:sy1, sx0:sx1].astype(np.float32)
            win = (win - off[:, None, None]) * scale[:, None, None]
            if params.mask_to_nucleus:
                win = win * (labels[sy0:sy1, sx0:sx1] == labs[i])
            buf[:, sy0 - ya:sy1 - ya, sx0 - xa:sx1 - xa] = win
        np.clip(buf, -_FLOAT16_MAX, _FLOAT16_MAX, out=buf)
        out[i] = buf
    return out


# ---------------------------------------------------------------------------------------
# per-sample outputs
def _read_mask(mask_path, shape, sample):
    import tifffile

    where = describe(mask_path, sample)
    try:
        mask = tifffile.imread(mask_path)
    except FileNotFoundError as exc:
        raise CosmicInputError(f"{where}: mask file not found; run the segment step first") from exc
    except Exception as exc:
        raise CosmicInputError(f"{where}: unreadable mask TIFF ({exc}); delete it and re-run segmentation") from exc
    mask = np.squeeze(mask)
    if mask.shape != tuple(shape):
        raise CosmicInputError(
            f"{where}: mask shape {mask.shape} does not match its image {tuple(shape)}; "
            "delete the mask and re-run segmentation"
        )
    return mask


def _read_image(img_path, sample, channel_order, **reading):
    """An image with its channels in the cohort's order (:func:`cosmic.imageio.order_channels`)."""
    from .imageio import order_channels, read_image

    return order_channels(read_image(img_path, sample=sample, **reading), channel_order, describe(img_path, sample))


def build_nuclei_outputs(
    sample: str,
    images: Iterable[tuple[str, Any, Any]],
    table_path,
    crops_path,
    seg_params=None,
    nuclei_params: NucleiParams | Mapping | None = None,
    dna_channel: int | str = 0,
    z_projection: str = "max",
    progress: bool = True,
    channel_order: list[str] | None = None,
) -> pd.DataFrame:
    """Write ``nuclei.parquet`` and ``crops.npy`` for one sample; return the table.

    ``images`` lists ``(image_name, image_path, mask_path)``. Two streaming passes keep
    memory flat in the number of nuclei: the first measures each image (tables only), the
    second cuts the crops of each image straight into the memory-mapped ``.npy``. Both
    files are written atomically; with no nuclei they hold an empty table and a
    (0, C, S, S) array. ``channel_order``: the channel names of the cohort's first image; crops
    and per-channel columns follow it (images without channel names keep their index order).
    """
    from tqdm.auto import tqdm

    from .segmentation import SegmentationParams

    if not isinstance(nuclei_params, NucleiParams):
        nuclei_params = NucleiParams.from_config(nuclei_params)
    if seg_params is not None and not isinstance(seg_params, SegmentationParams):
        seg_params = SegmentationParams.from_config(seg_params)
    # None ("auto"): each image's QC sizes derive from its median nucleus area
    diameter = seg_params.fixed_diameter if seg_params is not None else None
    crop = nuclei_params.crop()
    images, reading = list(images), dict(dna_channel=dna_channel, z_projection=z_projection)
    if not images:
        raise CosmicInputError(f"sample '{sample}': no images to measure; check the sample sheet")

    tables, channels = [], None
    for name, img_path, mask_path in tqdm(images, desc=f"{sample}: measure", disable=not progress,
                                          unit="image"):
        img = _read_image(img_path, sample, channel_order, **reading)
        if channels is None:
            channels = img.channel_names
        elif len(img.channel_names) != len(channels):
            raise CosmicInputError(
                f"{describe(img_path, sample)}: has {len(img.channel_names)} channels "
                f"({', '.join(img.channel_names)}) but earlier images of the sample have "
                f"{len(channels)} ({', '.join(channels)}); all images of a sample need the same channels"
            )
        mask = _read_mask(mask_path, img.shape_yx, sample)
        tables.append(measure_nuclei(mask, img, name, sample, nuclei_params, nucleus_diameter=diameter))
        del img, mask
    non_empty = [t for t in tables if len(t)]
    table = pd.concat(non_empty, ignore_index=True) if non_empty else tables[0]
    table.insert(4, "crop_index", np.arange(len(table), dtype=np.int64))
    C, S = len(channels), crop.crop_size

    with atomic_path(crops_path) as tmp:
        bank = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(table), C, S, S))
        start = 0
        for (name, img_path, mask_path), t in tqdm(list(zip(images, tables)), desc=f"{sample}: crops",
                                                   disable=not progress, unit="image"):
            if len(t) == 0:
                continue
            img = _read_image(img_path, sample, channel_order, **reading)
            mask = _read_mask(mask_path, img.shape_yx, sample)
            extract_crops(mask, img.pixels, t, crop, out=bank[start:start + len(t)])
            start += len(t)
            bank.flush()
            del img, mask
        bank.flush()
        del bank
    with atomic_path(table_path) as tmp:
        table.to_parquet(tmp, index=False)
    return table
