"""Synthetic DNA-stain fields of view with known nuclei, for segmentation and measurement tests.

Imported by ``tests/test_segmentation.py`` and ``tests/test_nuclei.py`` (pytest puts ``tests/`` on
``sys.path``) and by ``benchmarks/segmentation.py`` (which adds ``tests/`` itself).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


def make_synthetic_nuclei(
    shape=(512, 512),
    n_nuclei: int = 60,
    diameter: float = 30.0,
    touching_fraction: float = 0.3,
    background: float = 200.0,
    brightness: float = 1500.0,
    gradient: float = 0.5,
    noise_sd: float = 20.0,
    blur_sigma: float = 1.5,
    seed: int = 0,
    dtype=np.uint16,
):
    """Render a synthetic DNA-stain field of view and its ground-truth labels.

    Nuclei are ellipses (diameter varying +-25%, eccentric, random orientation) with varying
    brightness and a smooth chromatin texture; ``touching_fraction`` of them are placed
    against an earlier nucleus. The image gets an uneven (tilted + blob) background,
    blur, Poisson shot noise and Gaussian read noise. Returns ``(image, labels)``.
    """
    rng = np.random.default_rng(seed)
    H, W = shape
    labels = np.zeros(shape, dtype=np.int32)
    signal = np.zeros(shape, dtype=np.float32)
    centres: list[tuple[float, float, float]] = []
    yy, xx = np.mgrid[0:H, 0:W]
    k = 0
    attempts = 0
    while k < n_nuclei and attempts < n_nuclei * 50:
        attempts += 1
        d = diameter * rng.uniform(0.75, 1.25)
        ecc = rng.uniform(0.75, 1.0)
        a, b = d / 2 / math.sqrt(ecc), d / 2 * math.sqrt(ecc)
        if centres and rng.random() < touching_fraction:
            cy0, cx0, r0 = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * math.pi)
            dist = (r0 + d / 2) * 0.85
            cy, cx = cy0 + dist * math.sin(ang), cx0 + dist * math.cos(ang)
        else:
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        # reject if it would overlap an existing nucleus too much
        if any(math.hypot(cy - y, cx - x) < 0.8 * (r + d / 2) for y, x, r in centres):
            continue
        theta = rng.uniform(0, math.pi)
        r = int(math.ceil(a)) + 2
        y0, y1 = max(0, int(cy) - r), min(H, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(W, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        inside &= labels[y0:y1, x0:x1] == 0
        if inside.sum() < 10:
            continue
        k += 1
        centres.append((cy, cx, d / 2))
        labels[y0:y1, x0:x1][inside] = k
        tex = ndi.gaussian_filter(rng.normal(size=inside.shape), 2.0)
        tex = 1.0 + 0.25 * tex / (tex.std() + 1e-9)
        level = brightness * rng.uniform(0.5, 1.5)
        signal[y0:y1, x0:x1][inside] = (level * tex)[inside]
    img = ndi.gaussian_filter(signal, blur_sigma) if blur_sigma > 0 else signal
    bg = background * (1 + gradient * (xx / W + 0.5 * np.sin(yy / H * math.pi)))
    img = rng.poisson(np.clip(img + bg, 0, None)).astype(np.float32)
    img += rng.normal(0, noise_sd, size=shape)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        img = np.clip(np.round(img), info.min, info.max)
    return img.astype(dtype), labels
