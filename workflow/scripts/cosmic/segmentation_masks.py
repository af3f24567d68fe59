"""Nucleus label masks made outside the workflow (cellpose, StarDist, QuPath...), used instead of
segmenting.

A sample whose sample-sheet row gives ``masks`` (matched to its images by name at parse time,
:func:`cosmic.config.resolve_masks`) has each mask checked against its image and written where
the ``segment`` rule writes its masks: same Y x X shape as the image's DNA plane, integer labels
(float TIFFs holding whole numbers are cast), background 0, labels renumbered 1..n in the order
of the given labels.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import CosmicInputError, describe

__all__ = ["import_mask", "checked_labels"]


def _read(mask_path, where: str) -> np.ndarray:
    import tifffile

    try:
        return np.squeeze(tifffile.imread(mask_path))
    except FileNotFoundError as exc:
        raise CosmicInputError(f"{where}: mask file not found; check the 'masks' column of the sample sheet") from exc
    except Exception as exc:  # tifffile raises many kinds
        raise CosmicInputError(f"{where}: not a readable TIFF ({type(exc).__name__}: {exc}); re-export the mask") from exc


def _as_integers(mask: np.ndarray, where: str) -> np.ndarray:
    """Integer labels: integer and boolean masks as they are, floats only when every value is whole."""
    if mask.dtype.kind in "iub":
        return mask.astype(np.int64, copy=False)
    if mask.dtype.kind != "f":
        raise CosmicInputError(f"{where}: unsupported pixel type {mask.dtype}; a label mask holds integers")
    if not np.isfinite(mask).all():
        raise CosmicInputError(f"{where}: the mask has NaN or infinite pixels; a label mask holds integers "
                               "(0 = background, 1..n = nuclei)")
    whole = mask == np.round(mask)
    if not whole.all():
        example = float(mask[~whole].flat[0])
        raise CosmicInputError(
            f"{where}: the mask holds non-integer values (e.g. {example:g} in {int((~whole).sum())} pixels); "
            "this looks like a probability or intensity image, not a label mask. Export the label image "
            "(cellpose: *_cp_masks.tif; StarDist: the labels; QuPath: a labelled image, one integer per nucleus)"
        )
    return mask.astype(np.int64)


def checked_labels(mask: np.ndarray, shape_yx: tuple[int, int], where: str) -> tuple[np.ndarray, int]:
    """The mask as consecutive int32 labels (0 = background, 1..n), once it is a 2-D label image of
    ``shape_yx``; also return how many labels it gave (n)."""
    from skimage.segmentation import relabel_sequential

    if mask.ndim != 2:
        raise CosmicInputError(f"{where}: the mask has shape {mask.shape}; expected one 2-D Y x X label image "
                               "per image (3-D masks: project or pick the plane first)")
    if mask.shape != tuple(shape_yx):
        raise CosmicInputError(
            f"{where}: mask shape {mask.shape} does not match the image's {tuple(shape_yx)} (Y x X); the mask "
            "was made from another image or a resized copy. Give the mask made from this image"
        )
    labels = _as_integers(mask, where)
    if labels.size and labels.min() < 0:
        raise CosmicInputError(f"{where}: the mask has negative labels; use 0 for background and 1..n for nuclei")
    labels = relabel_sequential(labels)[0]
    n = int(labels.max()) if labels.size else 0
    if n >= np.iinfo(np.int32).max:
        raise CosmicInputError(f"{where}: {n} labels are too many for one image")
    return labels.astype(np.int32), n


def import_mask(
    mask_path,
    image_path,
    out_path,
    dna_channel: int | str = 0,
    z_projection: str = "max",
    sample: str | None = None,
    image: str | None = None,
) -> dict:
    """Check a given label mask against its image and write it as the workflow's mask.

    The image is read as the ``segment`` rule reads it (so a bad image or ``dna_channel`` fails
    here, as it would there). Returns ``nuclei`` (labels written, 1..n) and ``max_label`` (the
    largest label in the given file). A mask without nuclei warns, as segmentation does.
    """
    from .imageio import read_image
    from .segmentation import SegmentationWarning, write_mask

    where = f"{describe(mask_path, sample)} (mask of image '{image or image_path}')"
    pixels = read_image(image_path, dna_channel=dna_channel, z_projection=z_projection, sample=sample)
    given = _read(mask_path, where)
    labels, n = checked_labels(given, pixels.shape_yx, where)
    if n == 0:
        warnings.warn(f"{where}: the mask holds no nuclei; check that it belongs to this image",
                      SegmentationWarning, stacklevel=2)
    elif n == 1 and _pieces(labels) > 1:
        warnings.warn(f"{where}: the only label has {_pieces(labels)} separate pieces; is this a binary "
                      "mask? Give a label image (one integer per nucleus)", SegmentationWarning, stacklevel=2)
    write_mask(labels, out_path, metadata={"source": "imported", "mask": str(mask_path)})
    return {"nuclei": n, "max_label": float(given.max()) if given.size else 0.0}


def _pieces(labels: np.ndarray) -> int:
    from scipy import ndimage as ndi

    return int(ndi.label(labels > 0)[1])
