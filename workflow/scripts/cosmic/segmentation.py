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
cellpose's diameter); any derived value can also be set explicitly. Images with large
nuclei (``nucleus_diameter >= 2 * working_diameter``) are processed on an integer-downsampled
copy and the labels brought back to full resolution, which keeps throughput roughly
independent of magnification.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, morphology, segmentation, transform
from skimage.feature import peak_local_max

from .atomic import atomic_path
from .errors import CosmicInputError

__all__ = [
    "SegmentationParams",
    "THRESHOLD_METHODS",
    "segment_nuclei",
    "segment_image_file",
    "write_mask",
]

# gain inside log(1 + gain * x) for the optional log transform (x is scaled to ~0..1)
LOG_GAIN = 30.0
THRESHOLD_METHODS = ("otsu", "li", "mean", "triangle", "local")


@dataclass
class SegmentationParams:
    """Parameters of :func:`segment_nuclei`. ``None`` means "derive from nucleus_diameter"."""

    nucleus_diameter: float = 30.0
    """Typical nucleus diameter in pixels; all other length-scales derive from it."""
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
    """Smallest nucleus kept (px); default 0.1 x area of a nucleus_diameter disk."""
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
    def expected_area(self) -> float:
        return math.pi * (self.nucleus_diameter / 2) ** 2

    @property
    def sigma(self) -> float:
        return self.smoothing_sigma if self.smoothing_sigma is not None else self.nucleus_diameter / 15

    @property
    def bg_radius(self) -> float:
        return self.background_radius if self.background_radius is not None else 2 * self.nucleus_diameter

    @property
    def min_distance(self) -> int:
        v = self.seed_min_distance if self.seed_min_distance is not None else 0.3 * self.nucleus_diameter
        return max(1, int(round(v)))

    @property
    def h(self) -> float:
        return self.seed_h if self.seed_h is not None else 0.05 * self.nucleus_diameter

    @property
    def area_min(self) -> float:
        return self.min_area if self.min_area is not None else 0.2 * self.expected_area

    @property
    def area_max(self) -> float:
        return self.max_area if self.max_area is not None else 10 * self.expected_area

    @property
    def block_size(self) -> int:
        b = self.local_block_size if self.local_block_size is not None else int(2 * self.nucleus_diameter)
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

        positive("nucleus_diameter", allow_none=False)
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
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise CosmicInputError(
                    f"segmentation parameter {name} must be true or false, got {getattr(self, name)!r}"
                )
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
    step = max(1, int(math.sqrt(img.size / 250_000)))
    v = img[::step, ::step].ravel()
    med = float(np.median(v))
    low = v[v <= med]
    mad = float(np.median(med - low)) * 1.4826
    return med + k * max(mad, 1e-6)


def _downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsampling by an integer factor; a partial last block is edge-padded
    (not zero-padded) so borders keep their level."""
    H, W = img.shape
    ph, pw = (-H) % factor, (-W) % factor
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw)), mode="edge")
    return transform.downscale_local_mean(img, (factor, factor)).astype(np.float32)


def _upsample(small: np.ndarray, shape, factor: int) -> np.ndarray:
    """Bilinear upsampling of an image downsampled by ``downscale_local_mean(., factor)``
    (pixel centres aligned), cropped to ``shape``."""
    up = ndi.zoom(small, factor, order=1, grid_mode=True, mode="nearest")
    return up[: shape[0], : shape[1]]


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


def _merge_shallow(ws: np.ndarray, dist: np.ndarray, h: float, peak_values=None) -> np.ndarray:
    """Merge watershed regions of ``dist`` whose separating saddle lies less than ``h`` below
    the lower of their two peaks (the result equals seeding with the h-maxima of ``dist``,
    without the cost of a morphological reconstruction). ``peak_values[i-1]`` is the maximum
    of region ``i`` (its seed's value) when known."""
    k = int(ws.max())
    if k < 2:
        return ws
    peak = np.zeros(k + 1, dtype=np.float64)
    if peak_values is None:
        peak[1:] = ndi.maximum(dist, ws, index=np.arange(1, k + 1))
    else:
        peak[1:] = peak_values
    keys, passes = [], []
    for a, b, da, db in (
        (ws[:-1], ws[1:], dist[:-1], dist[1:]),
        (ws[:, :-1], ws[:, 1:], dist[:, :-1], dist[:, 1:]),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            lo = np.minimum(a[sel], b[sel]).astype(np.int64)
            hi = np.maximum(a[sel], b[sel]).astype(np.int64)
            keys.append(lo * (k + 1) + hi)
            passes.append(np.minimum(da[sel], db[sel]))
    if not keys:
        return ws
    keys = np.concatenate(keys)
    passes = np.concatenate(passes)
    order = np.argsort(keys, kind="stable")
    keys, passes = keys[order], passes[order]
    uniq, start = np.unique(keys, return_index=True)
    saddle = np.maximum.reduceat(passes, start)
    parent = list(range(k + 1))
    top = peak.tolist()

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for key, sad in sorted(zip(uniq.tolist(), saddle.tolist()), key=lambda t: -t[1]):
        ra, rb = find(key // (k + 1)), find(key % (k + 1))
        if ra == rb:
            continue
        if min(top[ra], top[rb]) - sad < h:
            if top[ra] < top[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
    roots = np.array([find(i) for i in range(k + 1)])
    _, lut = np.unique(roots, return_inverse=True)  # 0 stays 0 (root of 0 is 0, smallest)
    return lut[ws]


def _split(mask: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Label the foreground, splitting touching nuclei by a distance-transform watershed.

    Seeds are local maxima of the smoothed distance transform at least ``min_distance``
    apart; regions whose separating saddle is shallower than ``h`` are merged back. Only
    components with several seeds are flooded (on their bounding box), which keeps it fast.
    """
    comps, n = ndi.label(mask)
    if n == 0 or not params.split_touching:
        return comps
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    dist = ndi.gaussian_filter(dist, max(1.0, params.nucleus_diameter / 20))
    dist[~mask] = 0
    peaks = peak_local_max(dist, min_distance=params.min_distance, threshold_abs=0.5,
                           exclude_border=False)
    if len(peaks) == 0:
        return comps
    comp_of_peak = comps[peaks[:, 0], peaks[:, 1]]
    peaks, comp_of_peak = peaks[comp_of_peak > 0], comp_of_peak[comp_of_peak > 0]
    counts = np.bincount(comp_of_peak, minlength=n + 1)
    is_multi = counts > 1
    if not is_multi.any():
        return comps
    # flood only the components with several seeds, all at once
    sel = is_multi[comp_of_peak]
    peaks = peaks[sel]
    region = is_multi[comps]
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    ws = segmentation.watershed(-dist, markers, mask=region)
    if params.h > 0:
        ws = _merge_shallow(ws, dist, params.h, dist[peaks[:, 0], peaks[:, 1]])
    out = np.where(region, ws + n, comps).astype(np.int32)
    out[region & (ws == 0)] = 0
    return out


def _scaled(params: SegmentationParams, k: int) -> SegmentationParams:
    """Parameters for an image downsampled by an integer factor ``k``."""
    if k == 1:
        return params
    div = lambda v, p=1: None if v is None else v / k**p  # noqa: E731
    return params.replace(
        nucleus_diameter=params.nucleus_diameter / k,
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


def _labels_from_score(score: np.ndarray, params: SegmentationParams) -> np.ndarray:
    mask = score > 0
    if params.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(params.area_min * 0.5)))
    return _split(mask, params)


def _area_filter(labels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    bad = (areas < lo) | (areas > hi)
    bad[0] = False
    if bad.any():
        labels[bad[labels]] = 0
    return labels


def segment_nuclei(dna_yx: np.ndarray, params: SegmentationParams | None = None) -> np.ndarray:
    """Segment nuclei in a 2-D DNA image; return an int32 label image (0 = background).

    Images whose nuclei are much larger than ``working_diameter`` are segmented on a copy
    downsampled by an integer factor; the labels are brought back to full resolution and
    their outlines re-drawn from the (smooth, interpolated) foreground score.
    """
    params = params or SegmentationParams()
    img = np.asarray(dna_yx, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"segment_nuclei expects a 2-D image, got shape {img.shape}")
    if img.size == 0 or float(img.max()) == float(img.min()):
        return np.zeros(img.shape, dtype=np.int32)
    # normalise to a robust 0..1-ish range so the thresholds behave the same for any dtype
    step = max(1, int(math.sqrt(img.size / 250_000)))
    lo, hi = np.percentile(img[::step, ::step], [0.5, 99.9])
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    img = (img - lo) * np.float32(1.0 / (hi - lo))

    wd = params.working_diameter
    k = int(params.nucleus_diameter // wd) if wd else 1
    k = k if k >= 2 else 1
    if k == 1:
        labels = _labels_from_score(_foreground_score(img, params), params)
        labels = _area_filter(labels, params.area_min, params.area_max)
    else:
        sp = _scaled(params, k)
        small = _downscale(img, k)
        score_small = _foreground_score(small, sp)
        lab_small = _labels_from_score(score_small, sp)
        # inside filled holes the score is <= 0: lift it so the upsampled outline keeps them
        score_small[(lab_small > 0) & (score_small <= 0)] = 1e-3
        lab_small = _area_filter(lab_small, sp.area_min, sp.area_max)
        # cover the smooth outline: grow labels by one coarse pixel, upsample by repetition
        grown = ndi.grey_dilation(lab_small, size=(3, 3))
        lab_small = np.where(lab_small > 0, lab_small, grown)
        H, W = img.shape
        labels = np.repeat(np.repeat(lab_small, k, axis=0), k, axis=1)[:H, :W]
        # bilinear upsampling of the score gives smooth outlines at full resolution
        score = _upsample(score_small, img.shape, k)
        labels[score <= 0] = 0
        labels = _area_filter(labels, params.area_min, params.area_max)
    if params.remove_border_nuclei:
        labels = segmentation.clear_border(labels)
    present = np.bincount(labels.ravel())[1:] > 0
    if not present.all():
        labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def write_mask(labels: np.ndarray, mask_path) -> None:
    """Write a label image as a zlib-compressed uint16 (or uint32) TIFF, atomically."""
    n = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    with atomic_path(mask_path) as tmp:
        import tifffile

        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")


def segment_image_file(
    image_path,
    mask_path,
    params: SegmentationParams | Mapping | None = None,
    dna_channel: int | str = 0,
    z_projection: str = "max",
    sample: str | None = None,
    positions_yx=None,
) -> int:
    """Read an image, segment its DNA channel, write the label TIFF; return the nucleus count.

    ``positions_yx``: recorded cell positions in this image (from the pairing table); nuclei
    holding several of them are split (see :func:`split_at_positions`).
    """
    from .imageio import read_image

    if not isinstance(params, SegmentationParams):
        params = SegmentationParams.from_config(params)
    image = read_image(image_path, dna_channel=dna_channel, z_projection=z_projection, sample=sample)
    labels = segment_nuclei(image.dna, params)
    if positions_yx is not None:
        labels, _ = split_at_positions(labels, positions_yx, min_area=params.area_min)
    write_mask(labels, mask_path)
    return int(labels.max())


def split_at_positions(labels: np.ndarray, positions_yx, min_area: float = 0.0) -> tuple[np.ndarray, int]:
    """Split nuclei that hold several recorded cell positions; return (labels, number split).

    IRIS-like platforms record where each barcoded cell sits. A segmented object holding two
    or more such positions is two touching nuclei merged by the segmentation: it is split by a
    watershed on its distance transform, seeded at those positions. A split whose smallest part
    would be below ``min_area`` pixels, or whose positions are closer than the diameter of a
    nucleus of ``min_area``, is not made (the positions are then more likely noise).
    """
    from skimage.segmentation import relabel_sequential, watershed

    positions = np.asarray(positions_yx, dtype=float).reshape(-1, 2)
    if labels.max() == 0 or len(positions) < 2:
        return labels, 0
    iy = np.round(positions[:, 0]).astype(int)
    ix = np.round(positions[:, 1]).astype(int)
    inside = (iy >= 0) & (iy < labels.shape[0]) & (ix >= 0) & (ix < labels.shape[1])
    iy, ix = iy[inside], ix[inside]
    hit = labels[iy, ix]
    values, counts = np.unique(hit[hit > 0], return_counts=True)
    out = labels.copy()
    next_label = int(labels.max()) + 1
    boxes = ndi.find_objects(labels)
    n_split = 0
    for value in values[counts > 1]:
        box = boxes[value - 1]
        region = out[box] == value
        markers = np.zeros(region.shape, np.int32)
        for k, (y, x) in enumerate(zip(iy[hit == value], ix[hit == value]), start=1):
            markers[y - box[0].start, x - box[1].start] = k
        seeds = np.column_stack([iy[hit == value], ix[hit == value]]).astype(float)
        gaps = np.sqrt(((seeds[:, None] - seeds[None]) ** 2).sum(-1))[np.triu_indices(len(seeds), 1)]
        if gaps.min() < max(2.0 * np.sqrt(min_area / np.pi), 1.0):
            continue  # closer than two of the smallest nuclei allowed: not two nuclei
        parts = watershed(-ndi.distance_transform_edt(region), markers, mask=region)
        sizes = np.bincount(parts.ravel())[1:]
        if sizes.min() < max(min_area, 1):
            continue
        window = out[box]
        for k in range(2, len(sizes) + 1):
            window[parts == k] = next_label
            next_label += 1
        n_split += 1
    if n_split:
        out = relabel_sequential(out)[0]
    return out, n_split
