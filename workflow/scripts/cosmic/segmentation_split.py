"""Splitting of merged nuclei: the distance-transform watershed of :func:`segment_nuclei`
(``split_touching``) and the split at recorded cell positions (``split_at_positions``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import segmentation
from skimage.feature import peak_local_max

__all__ = ["merge_shallow", "split_touching", "split_at_positions"]


def merge_shallow(ws: np.ndarray, dist: np.ndarray, h: float, peak_values=None) -> np.ndarray:
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


def split_touching(mask: np.ndarray, params) -> np.ndarray:
    """Label the foreground, splitting touching nuclei by a distance-transform watershed.

    ``params``: a :class:`~cosmic.segmentation.SegmentationParams` with a numeric diameter.
    Seeds are local maxima of the smoothed distance transform at least ``min_distance``
    apart; regions whose separating saddle is shallower than ``h`` are merged back. Only
    components with several seeds are flooded (on their bounding box), which keeps it fast.
    """
    comps, n = ndi.label(mask)
    if n == 0 or not params.split_touching:
        return comps
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    dist = ndi.gaussian_filter(dist, max(1.0, params.diameter / 20))
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
        ws = merge_shallow(ws, dist, params.h, dist[peaks[:, 0], peaks[:, 1]])
    out = np.where(region, ws + n, comps).astype(np.int32)
    out[region & (ws == 0)] = 0
    return out


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
