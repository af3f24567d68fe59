"""Classical nucleus segmentation of a DNA-stain image with scikit-image.

Pipeline (``segment_nuclei``):

1. background correction: subtract a morphological opening of the image with a disk
   larger than a nucleus (computed on a downsampled copy, so it stays fast for big radii);
2. Gaussian smoothing;
3. foreground threshold: by default a local (Gaussian-weighted mean, ~2 diameters wide)
   threshold, which keeps dim nuclei next to bright ones, combined with a noise floor
   (background median + 3 robust SDs) so empty background is not picked up; or a global
   Otsu / Li / mean / triangle threshold, optionally on log-intensities;
4. hole filling and removal of specks;
5. splitting of touching nuclei: watershed on the (smoothed) distance transform, seeded by
   its local maxima at least ``seed_min_distance`` apart, merging regions whose separating
   saddle is shallower than ``seed_h`` (equivalent to h-maxima seeds);
6. area and border filters, consecutive relabelling.

Every length-scale follows from one parameter, ``nucleus_diameter`` (pixels, like
cellpose's diameter, or ``"auto"``: measured on each image by
:func:`cosmic.segmentation_size.estimate_nucleus_diameter`); any derived value can also be
set explicitly. Images with large
nuclei (``nucleus_diameter >= 2 * working_diameter``) are processed on an integer-downsampled
copy and the labels brought back to full resolution, which keeps throughput roughly
independent of magnification.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, morphology, segmentation

from .atomic import atomic_path
from .errors import CosmicDataWarning, CosmicInputError, describe, require_flag
from .segmentation_size import FALLBACK_DIAMETER, estimate_nucleus_diameter, fill_holes, normalise
from .segmentation_size import sample_pixels
from .segmentation_size import downscale as _downscale
from .segmentation_split import split_at_positions, split_touching

__all__ = [
    "SegmentationParams",
    "SegmentationWarning",
    "THRESHOLD_METHODS",
    "estimate_nucleus_diameter",
    "segment_nuclei",
    "segment_image_file",
    "split_at_positions",
    "write_mask",
]

log = logging.getLogger(__name__)

# gain inside log(1 + gain * x) for the optional log transform (x is scaled to ~0..1)
LOG_GAIN = 30.0
THRESHOLD_METHODS = ("otsu", "li", "mean", "triangle", "local")
AUTO = "auto"
PER_IMAGE = "per_image"
MEASURED = (AUTO, PER_IMAGE)  # diameters measured on the images rather than given in pixels
SIZE_FILTER_WARN_FRACTION = 0.25
"""Warn when the area filters remove more than this fraction of the candidate nuclei."""


class SegmentationWarning(CosmicDataWarning):
    """An image whose segmentation looks wrong (no nuclei, most objects filtered out)."""


@dataclass
class SegmentationParams:
    """Parameters of :func:`segment_nuclei`. ``None`` means "derive from nucleus_diameter"."""

    nucleus_diameter: float | str = "auto"
    """Typical nucleus diameter in pixels, or "auto" (measured on each image); all other
    length-scales derive from it."""
    threshold: str = "local"
    """Foreground threshold: otsu | li | mean | triangle | local."""
    threshold_scale: float = 1.0
    """Multiply the global threshold by this (<1 grows, >1 shrinks nuclei). Not used by local."""
    log_transform: bool = False
    """Threshold log(1 + intensity above background); helps with very uneven brightness."""
    local_block_size: int | None = None
    """Window (odd, px) of the local threshold; default ~2 diameters."""
    local_offset: float = 0.0
    """Local threshold = local mean - offset x (image SD): positive keeps more, negative less."""
    smoothing_sigma: float | None = None
    """Gaussian sigma (px) before thresholding; default diameter / 15."""
    background_radius: float | None = None
    """Radius (px) of the background-estimating opening; default 2 diameters; 0 disables."""
    split_touching: bool = True
    """Split touching nuclei by a distance-transform watershed."""
    seed_min_distance: float | None = None
    """Minimum distance (px) between watershed seeds; default 0.3 diameter."""
    seed_h: float | None = None
    """Seed prominence on the distance transform (px); default 0.05 diameter."""
    fill_holes: bool = True
    """Fill holes inside nuclei."""
    min_area: float | None = None
    """Smallest nucleus kept (px); default 0.2 x area of a nucleus_diameter disk."""
    max_area: float | None = None
    """Largest nucleus kept (px); default 10 x area of a nucleus_diameter disk."""
    remove_border_nuclei: bool = False
    """Drop nuclei touching the image border (the nuclei table flags them anyway)."""
    working_diameter: float | None = 15.0
    """Nuclei at least twice this wide are segmented on a copy downsampled by the integer
    factor nucleus_diameter // working_diameter (for speed); labels are brought back to full
    resolution with outlines re-drawn from the interpolated foreground. null/0 disables."""

    def __post_init__(self):
        self.validate()

    # ---- derived values -------------------------------------------------------------
    @property
    def fixed_diameter(self) -> float | None:
        """The configured diameter in pixels, or None for "auto" / "per_image" (measured on the image
        when the workflow has not resolved it to the run's reference diameter)."""
        return None if self.nucleus_diameter in MEASURED else float(self.nucleus_diameter)

    @property
    def diameter(self) -> float:
        """The diameter every derived length uses; "auto" must be resolved first."""
        if self.fixed_diameter is None:
            raise ValueError('nucleus_diameter is "auto": resolve it for an image first '
                             "(SegmentationParams.with_diameter(estimate_nucleus_diameter(image)))")
        return self.fixed_diameter

    def with_diameter(self, diameter: float) -> "SegmentationParams":
        return self.replace(nucleus_diameter=float(diameter))

    @property
    def expected_area(self) -> float:
        return math.pi * (self.diameter / 2) ** 2

    @property
    def sigma(self) -> float:
        return self.smoothing_sigma if self.smoothing_sigma is not None else self.diameter / 15

    @property
    def bg_radius(self) -> float:
        return self.background_radius if self.background_radius is not None else 2 * self.diameter

    @property
    def min_distance(self) -> int:
        v = self.seed_min_distance if self.seed_min_distance is not None else 0.3 * self.diameter
        return max(1, int(round(v)))

    @property
    def h(self) -> float:
        return self.seed_h if self.seed_h is not None else 0.05 * self.diameter

    @property
    def area_min(self) -> float:
        return self.min_area if self.min_area is not None else 0.2 * self.expected_area

    @property
    def area_max(self) -> float:
        return self.max_area if self.max_area is not None else 10 * self.expected_area

    @property
    def block_size(self) -> int:
        b = self.local_block_size if self.local_block_size is not None else int(2 * self.diameter)
        return max(3, int(b) | 1)  # odd

    # ---- construction / validation ------------------------------------------------
    @classmethod
    def from_config(cls, mapping: Mapping[str, Any] | None = None, **overrides) -> "SegmentationParams":
        """Build from a config mapping (e.g. ``config["segmentation"]``); unknown keys are errors."""
        from .config import params_from_config

        return params_from_config(cls, "segmentation", mapping, **overrides)

    def replace(self, **changes) -> "SegmentationParams":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        def positive(name, allow_none=True, allow_zero=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
                raise CosmicInputError(
                    f"segmentation parameter {name} must be a {'non-negative' if allow_zero else 'positive'} "
                    f"number, got {v!r}"
                )

        if self.nucleus_diameter not in MEASURED:
            try:
                positive("nucleus_diameter", allow_none=False)
            except CosmicInputError:
                raise CosmicInputError(
                    f'segmentation parameter nucleus_diameter must be "auto", "per_image" or a positive number '
                    f"(pixels), got {self.nucleus_diameter!r}"
                ) from None
        positive("threshold_scale", allow_none=False)
        positive("smoothing_sigma", allow_zero=True)
        positive("background_radius", allow_zero=True)
        positive("seed_min_distance")
        positive("seed_h", allow_zero=True)
        positive("min_area", allow_zero=True)
        positive("max_area")
        positive("local_block_size")
        positive("working_diameter", allow_zero=True)
        if self.threshold not in THRESHOLD_METHODS:
            raise CosmicInputError(
                f"segmentation parameter threshold must be one of {', '.join(THRESHOLD_METHODS)}, "
                f"got {self.threshold!r}"
            )
        if isinstance(self.local_offset, bool) or not isinstance(self.local_offset, (int, float)):
            raise CosmicInputError(f"segmentation parameter local_offset must be a number, got {self.local_offset!r}")
        for name in ("split_touching", "fill_holes", "remove_border_nuclei", "log_transform"):
            require_flag("segmentation", name, getattr(self, name))
        if self.min_area is not None and self.max_area is not None and self.min_area > self.max_area:
            raise CosmicInputError(
                f"segmentation parameters: min_area ({self.min_area}) is larger than max_area ({self.max_area})"
            )


# ---------------------------------------------------------------------------------------
def estimate_background(image: np.ndarray, radius: float) -> np.ndarray:
    """Smooth background under objects narrower than ``2*radius``: a grey opening with a
    disk, computed on a copy downsampled so the disk has radius ~6 px."""
    factor = max(1, int(radius // 6))
    small = _downscale(image, factor) if factor > 1 else image
    r = max(1, int(round(radius / factor)))
    bg = morphology.opening(small, morphology.disk(r))
    bg = ndi.uniform_filter(bg, size=2 * r + 1)  # remove the opening's blocky steps
    if factor > 1:
        bg = _upsample(bg, image.shape, factor)
    return np.minimum(bg.astype(np.float32), image)


def _noise_floor(img: np.ndarray, k: float = 3.0) -> float:
    """Background level + k robust standard deviations (median / MAD of the lower half)."""
    v = sample_pixels(img).ravel()
    med = float(np.median(v))
    low = v[v <= med]
    mad = float(np.median(med - low)) * 1.4826
    return med + k * max(mad, 1e-6)


def _upsample(small: np.ndarray, shape, factor: int) -> np.ndarray:
    """Bilinear upsampling of an image downsampled by ``downscale_local_mean(., factor)``
    (pixel centres aligned, edges clamped), cropped to ``shape``. Equal to
    ``ndi.zoom(small, factor, order=1, grid_mode=True, mode="nearest")`` but ~2x faster."""

    def axis(n_out: int, n_in: int):
        x = np.clip((np.arange(n_out, dtype=np.float32) + 0.5) / factor - 0.5, 0, n_in - 1)
        i0 = x.astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)

    small = np.asarray(small, dtype=np.float32)
    i0, i1, w = axis(shape[0], small.shape[0])
    rows = small[i0] * (1 - w)[:, None] + small[i1] * w[:, None]
    j0, j1, v = axis(shape[1], small.shape[1])
    return rows[:, j0] * (1 - v) + rows[:, j1] * v


def _local_threshold(img: np.ndarray, block_size: int, offset: float) -> np.ndarray:
    """``skimage.filters.threshold_local`` (Gaussian-weighted local mean), computed on a
    downsampled copy when the window is large: the local mean is smooth, so this is
    equivalent up to interpolation error and much faster."""
    f = max(1, block_size // 16)
    if f == 1:
        return filters.threshold_local(img, block_size=block_size, method="gaussian", offset=offset)
    small = _downscale(img, f)
    t = filters.threshold_local(small, block_size=max(3, (block_size // f) | 1), method="gaussian",
                                offset=offset)
    return _upsample(t.astype(np.float32), img.shape, f)


def _threshold_score(img: np.ndarray, params: SegmentationParams) -> np.ndarray:
    method = params.threshold
    if method == "local":
        t = _local_threshold(img, params.block_size, params.local_offset * float(img.std()))
        floor = _noise_floor(img)
        return np.minimum(img - t, img - floor)
    if method == "otsu":
        t = filters.threshold_otsu(img)
    elif method == "li":
        t = filters.threshold_li(img)
    elif method == "mean":
        t = float(img.mean())
    elif method == "triangle":
        t = filters.threshold_triangle(img)
    else:  # pragma: no cover - validated earlier
        raise ValueError(method)
    return img - np.float32(t * params.threshold_scale)


def _scaled(params: SegmentationParams, k: int) -> SegmentationParams:
    """Parameters for an image downsampled by an integer factor ``k``."""
    if k == 1:
        return params
    div = lambda v, p=1: None if v is None else v / k**p  # noqa: E731
    return params.replace(
        nucleus_diameter=params.diameter / k,
        smoothing_sigma=div(params.smoothing_sigma),
        background_radius=div(params.background_radius),
        seed_min_distance=div(params.seed_min_distance),
        seed_h=div(params.seed_h),
        min_area=div(params.min_area, 2),
        max_area=div(params.max_area, 2),
        local_block_size=None if params.local_block_size is None else max(3, int(params.local_block_size / k)),
        working_diameter=None,
    )


def _foreground_score(img: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Background-corrected, smoothed image minus its threshold: foreground is ``> 0``."""
    if params.bg_radius > 0:
        img = img - estimate_background(img, params.bg_radius)
    if params.sigma > 0:
        img = ndi.gaussian_filter(img, params.sigma)
    if params.log_transform:
        img = np.log1p(np.clip(img, 0, None) * LOG_GAIN)
    return _threshold_score(img, params)


def _labels_from_score(score: np.ndarray, params: SegmentationParams, counts: dict) -> np.ndarray:
    mask = score > 0
    if params.fill_holes:
        mask = fill_holes(mask)
    # specks (at most half the smallest nucleus) go before splitting
    comps, _ = ndi.label(mask)
    speck = np.bincount(comps.ravel()) <= max(1, int(params.area_min * 0.5))
    speck[0] = False
    if speck.any():
        mask &= ~speck[comps]
        counts["removed_specks"] += int(speck.sum())
    return split_touching(mask, params)


def _area_filter(labels: np.ndarray, lo: float, hi: float, counts: dict | None = None) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    small, large = areas < lo, areas > hi
    small[0] = large[0] = False
    small &= areas > 0
    if counts is not None:
        counts["removed_too_small"] += int(small.sum())
        counts["removed_too_large"] += int(large.sum())
    bad = small | large
    if bad.any():
        labels[bad[labels]] = 0
    return labels


def _n_objects(labels: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def _segment(img: np.ndarray, params: SegmentationParams, counts: dict) -> np.ndarray:
    """Labels of a normalised image whose diameter is known (see :func:`segment_nuclei`)."""
    wd = params.working_diameter
    k = int(params.diameter // wd) if wd else 1
    k = k if k >= 2 else 1
    if k == 1:
        labels = _labels_from_score(_foreground_score(img, params), params, counts)
        counts["candidates"] = _n_objects(labels)
        labels = _area_filter(labels, params.area_min, params.area_max, counts)
    else:
        sp = _scaled(params, k)
        small = _downscale(img, k)
        score_small = _foreground_score(small, sp)
        lab_small = _labels_from_score(score_small, sp, counts)
        # inside filled holes the score is <= 0: lift it so the upsampled outline keeps them
        score_small[(lab_small > 0) & (score_small <= 0)] = 1e-3
        counts["candidates"] = _n_objects(lab_small)
        lab_small = _area_filter(lab_small, sp.area_min, sp.area_max, counts)
        # cover the smooth outline: grow labels by one coarse pixel, upsample by repetition
        grown = ndi.grey_dilation(lab_small, size=(3, 3))
        lab_small = np.where(lab_small > 0, lab_small, grown)
        H, W = img.shape
        labels = np.repeat(np.repeat(lab_small, k, axis=0), k, axis=1)[:H, :W]
        # bilinear upsampling of the score gives smooth outlines at full resolution
        score = _upsample(score_small, img.shape, k)
        labels[score <= 0] = 0
        labels = _area_filter(labels, params.area_min, params.area_max, counts)
    if params.remove_border_nuclei:
        before = _n_objects(labels)
        labels = segmentation.clear_border(labels)
        counts["removed_border"] += before - _n_objects(labels)
    present = np.bincount(labels.ravel())[1:] > 0
    if not present.all():
        labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def _resolve_diameter(img: np.ndarray, params: SegmentationParams, where: str):
    """(params with a numeric diameter, where it came from: config | auto | fallback)."""
    if params.fixed_diameter is not None:
        return params, "config"
    d = estimate_nucleus_diameter(img, normalised=True) if img.size and img.max() > img.min() else math.nan
    if math.isfinite(d):
        log.info("%s: nucleus diameter estimated from the image: %.1f px", where, d)
        return params.with_diameter(d), "auto"
    warnings.warn(f"{where}: found nothing nucleus-like to measure the nucleus diameter on; "
                  f"using {FALLBACK_DIAMETER:g} px", SegmentationWarning, stacklevel=3)
    return params.with_diameter(FALLBACK_DIAMETER), "fallback"


def _warn_if_suspicious(info: dict, params: SegmentationParams, where: str) -> None:
    d = f"nucleus diameter {info['nucleus_diameter']:.1f} px ({info['diameter_source']})"
    if info["nuclei"] == 0:
        warnings.warn(f"{where}: no nuclei found ({d}); check the image, imaging.dna_channel and "
                      "segmentation.nucleus_diameter", SegmentationWarning, stacklevel=3)
    small, large = info["removed_too_small"], info["removed_too_large"]
    if small + large >= 2 and small + large > SIZE_FILTER_WARN_FRACTION * info["candidates"]:
        warnings.warn(
            f"{where}: the size filters removed {small + large} of {info['candidates']} objects "
            f"({small} under {params.area_min:.0f} px, {large} over {params.area_max:.0f} px; {d}); "
            "is segmentation.nucleus_diameter right for this magnification? Try 'auto'.",
            SegmentationWarning, stacklevel=3,
        )


def segment_nuclei(dna_yx: np.ndarray, params: SegmentationParams | None = None,
                   info: dict | None = None, name: str | None = None) -> np.ndarray:
    """Segment nuclei in a 2-D DNA image; return an int32 label image (0 = background).

    With ``nucleus_diameter: "auto"`` the diameter is first measured on the image
    (:func:`estimate_nucleus_diameter`). Images whose nuclei are much larger than
    ``working_diameter`` are segmented on a copy downsampled by an integer factor; the labels
    are brought back to full resolution and their outlines re-drawn from the (smooth,
    interpolated) foreground score.

    ``info``: a dict to fill with ``nucleus_diameter`` (px, as used), ``diameter_source``
    (config | auto | fallback), ``nuclei``, ``candidates`` (objects before the area filters),
    ``removed_specks``, ``removed_too_small``, ``removed_too_large`` and ``removed_border``.
    ``name`` names the image in warnings (no nuclei; size filters removing over
    ``SIZE_FILTER_WARN_FRACTION`` of the objects).
    """
    params = params or SegmentationParams()
    img = np.asarray(dna_yx, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"segment_nuclei expects a 2-D image, got shape {img.shape}")
    where = name or "image"
    counts = dict.fromkeys(("candidates", "removed_specks", "removed_too_small", "removed_too_large",
                            "removed_border"), 0)
    if img.size == 0 or float(img.max()) == float(img.min()):
        params, source = _resolve_diameter(img, params, where)
        labels = np.zeros(img.shape, dtype=np.int32)
    else:
        img = normalise(img)  # robust 0..1 range: thresholds behave the same for any dtype
        params, source = _resolve_diameter(img, params, where)
        labels = _segment(img, params, counts)
    record = {"nucleus_diameter": params.diameter, "diameter_source": source,
              "nuclei": _n_objects(labels), **counts}
    _warn_if_suspicious(record, params, where)
    if info is not None:
        info.update(record)
    return labels


def write_mask(labels: np.ndarray, mask_path, metadata: dict | None = None) -> None:
    """Write a label image as a zlib-compressed uint16 (or uint32) TIFF, atomically.

    ``metadata`` (JSON-able) goes into the TIFF description (``TiffFile.shaped_metadata``)."""
    n = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    with atomic_path(mask_path) as tmp:
        import tifffile

        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", metadata=dict(metadata or {}))


def segment_image_file(
    image_path,
    mask_path,
    params: SegmentationParams | Mapping | None = None,
    dna_channel: int | str = 0,
    z_projection: str = "max",
    sample: str | None = None,
    positions_yx=None,
    info: dict | None = None,
    compare_estimate: bool = False,
) -> int:
    """Read an image, segment its DNA channel, write the label TIFF; return the nucleus count.

    ``positions_yx``: recorded cell positions in this image (from the pairing table); nuclei
    holding several of them are split (see :func:`split_at_positions`). ``info``: a dict to
    fill as in :func:`segment_nuclei` (plus ``split_at_positions``); the diameter used and its
    source are also stored in the mask's TIFF description. ``compare_estimate``: also measure the
    diameter on this image; when it is outside 0.75-1.33 x the given one (the run's reference),
    e.g. an image of another magnification mixed into a sample, segment with the image's own
    estimate and warn (``diameter_source`` becomes ``auto``).
    """
    from .imageio import read_image

    if not isinstance(params, SegmentationParams):
        params = SegmentationParams.from_config(params)
    image = read_image(image_path, dna_channel=dna_channel, z_projection=z_projection, sample=sample)
    record = {}
    own = None
    if compare_estimate and params.fixed_diameter is not None:
        own = _compare_with_image(image.dna, params.fixed_diameter, record, describe(image_path, sample))
        own, params = (own, params.with_diameter(own)) if own != params.fixed_diameter else (None, params)
    labels = segment_nuclei(image.dna, params, info=record, name=describe(image_path, sample))
    if own is not None:
        record["diameter_source"] = "auto"
    if positions_yx is not None:
        used = params.with_diameter(record["nucleus_diameter"])
        labels, record["split_at_positions"] = split_at_positions(labels, positions_yx, min_area=used.area_min)
        record["nuclei"] = int(labels.max())
    write_mask(labels, mask_path, metadata={k: record[k] for k in ("nucleus_diameter", "diameter_source")})
    if info is not None:
        info.update(record)
    return int(labels.max())


def _compare_with_image(dna, diameter: float, record: dict, where: str) -> float:
    """The diameter to segment this image with: ``diameter`` (the run's reference), or this image's
    own estimate when that is outside ``SAME_SCALE`` x the reference (another magnification mixed
    into the sample), with a warning naming the image. The estimate is recorded either way."""
    from .segmentation_size import SAME_SCALE

    estimate = estimate_nucleus_diameter(dna)
    record["image_diameter_estimate"] = estimate
    if math.isfinite(estimate) and not SAME_SCALE[0] <= estimate / diameter <= SAME_SCALE[1]:
        warnings.warn(f"{where}: nuclei look {estimate:.0f} px across but the run's reference diameter is "
                      f"{diameter:.0f} px (another magnification?); segmenting this image with its own "
                      f"{estimate:.0f} px.", SegmentationWarning, stacklevel=3)
        return estimate
    return diameter


if __name__ == "__main__":  # python -m cosmic.segmentation IMAGES_DIR OUT_DIR [options]
    from cosmic.segmentation_cli import main

    raise SystemExit(main())
