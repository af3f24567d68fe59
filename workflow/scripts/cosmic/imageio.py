"""Read microscope images (TIFF / OME-TIFF) into a channel-first float32 array.

``read_image`` accepts 2-D single- and multi-channel images in the axis orders YX, CYX and
YXC (RGB-like), and z-stacks (ZYX, ZCYX, CZYX, ZYXC, ...), which are reduced to one plane
per channel by maximum projection or by picking the best-focused plane.

Axis order comes from the file's metadata when it has any (OME-XML, ImageJ hyperstack, or
tifffile's own ``axes`` metadata); otherwise it is guessed from the shape: the two largest
trailing dimensions are Y and X, and a small dimension (at most ``MAX_CHANNELS_GUESS``)
is the channel axis. Pass ``axes="ZCYX"`` (etc.) to override a wrong guess.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from .errors import CosmicInputError, describe

__all__ = ["ImageData", "read_image", "Z_PROJECTIONS", "project_z", "resolve_channel", "file_channel_names",
           "channel_order", "check_dna_channel", "order_channels", "crop_dna_channel"]

log = logging.getLogger(__name__)

Z_PROJECTIONS = ("max", "best_focus", "mean")
# A dimension this small (and not Y or X) is taken as channels when the file has no axes metadata.
MAX_CHANNELS_GUESS = 4
# Axis letters used by tifffile (OME, ImageJ, shaped) that we map onto C / Z.
_CHANNEL_LETTERS = {"C", "S"}  # S = samples per pixel (RGB)
_Z_LETTERS = {"Z"}
_SPATIAL = {"Y", "X"}


@dataclass
class ImageData:
    """A field of view: ``pixels`` is float32 C x Y x X."""

    pixels: np.ndarray
    channel_names: list[str]
    dna_index: int = 0
    path: str | None = None
    source_axes: str = field(default="", repr=False)

    @property
    def dna(self) -> np.ndarray:
        """The DNA-stain channel, Y x X."""
        return self.pixels[self.dna_index]

    @property
    def shape_yx(self) -> tuple[int, int]:
        return tuple(self.pixels.shape[1:])


def _ome_channel_names(tif: tifffile.TiffFile) -> list[str] | None:
    """Channel names of the first OME image, or None."""
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for image in root.iter():
        if image.tag.rsplit("}", 1)[-1] != "Image":
            continue
        for pixels in image:
            if pixels.tag.rsplit("}", 1)[-1] != "Pixels":
                continue
            names = []
            for ch in pixels:
                if ch.tag.rsplit("}", 1)[-1] == "Channel":
                    names.append(ch.attrib.get("Name") or ch.attrib.get("ID") or "")
            return names or None
        break
    return None


def _check_truncated(tif: tifffile.TiffFile, path) -> None:
    """Raise if the pixel data referenced by the first series lies past the end of the file."""
    size = os.path.getsize(path)
    for page in tif.series[0].pages:
        if page is None:
            continue
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for off, cnt in zip(offsets, counts):
            if off + cnt > size:
                raise ValueError(
                    f"pixel data ends at byte {off + cnt} but the file has only {size} bytes"
                )


def _guess_axes(shape: tuple[int, ...]) -> str:
    """Guess axis letters from a shape with no metadata (see module docstring)."""
    nd = len(shape)
    if nd == 2:
        return "YX"
    if nd == 3:
        if shape[-1] <= MAX_CHANNELS_GUESS < min(shape[0], shape[1]):
            return "YXC"
        if shape[0] <= MAX_CHANNELS_GUESS:
            return "CYX"
        return "ZYX"
    if nd == 4:
        if shape[-1] <= MAX_CHANNELS_GUESS < min(shape[1], shape[2]):
            return "ZYXC"
        # two leading non-spatial dims: the smaller one is channels
        return "CZYX" if shape[0] < shape[1] else "ZCYX"
    raise ValueError(f"cannot guess the axis order of a {nd}-D array of shape {shape}")


def _resolve_axes(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str]:
    """The shape without singleton non-spatial axes and its axis letters (S->C, unknown letters
    resolved by the heuristic). Works on the shape alone, so metadata readers can use it too."""
    axes = axes.upper()
    if len(axes) != len(shape):
        raise ValueError(f"axes '{axes}' do not match the {len(shape)}-D shape {tuple(shape)}")
    # squeeze singleton axes other than Y/X (a single C or Z is then simply absent)
    keep = [i for i, (a, n) in enumerate(zip(axes, shape)) if a in _SPATIAL or n != 1]
    shape = tuple(shape[i] for i in keep)
    axes = "".join(axes[i] for i in keep)
    if "S" in axes and "C" not in axes:  # samples per pixel (RGB) are channels
        axes = axes.replace("S", "C")
    known = set("CZYX")
    if any(a not in known for a in axes) or "Y" not in axes or "X" not in axes:
        # metadata does not tell (e.g. tifffile's generic 'Q' / 'I' axes): guess from shape
        unknown_ok = set(axes) - known <= {"Q", "I", "T", "S"}
        if not unknown_ok and "Y" in axes and "X" in axes:
            raise ValueError(f"unsupported axes '{axes}' (shape {shape})")
        axes = _guess_axes(shape)
    if len(set(axes)) != len(axes):
        raise ValueError(f"duplicate axis letters in '{axes}' (shape {shape})")
    return shape, axes


def _normalise_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Drop singleton non-spatial axes, map S->C, resolve unknown letters by the heuristic."""
    shape, axes = _resolve_axes(data.shape, axes)
    return data.reshape(shape), axes


def project_z(stack_zcyx: np.ndarray, method: str, dna_index: int) -> np.ndarray:
    """Reduce Z x C x Y x X to C x Y x X."""
    if stack_zcyx.shape[0] == 1:
        return stack_zcyx[0]
    if method == "max":
        return stack_zcyx.max(axis=0)
    if method == "mean":
        return stack_zcyx.mean(axis=0, dtype=np.float32)
    if method == "best_focus":
        scores = [
            float(ndi.laplace(plane[dna_index].astype(np.float32, copy=False)).var())
            for plane in stack_zcyx
        ]
        return stack_zcyx[int(np.argmax(scores))]
    raise ValueError(f"unknown z_projection '{method}'")


def _check_request(path, z_projection: str, where: str) -> Path:
    """The image path, once the projection is known and the path is a non-empty file."""
    if z_projection not in Z_PROJECTIONS:
        raise CosmicInputError(
            f"{where}: unknown z_projection '{z_projection}'; use one of {', '.join(Z_PROJECTIONS)}"
        )
    p = Path(path)
    if not p.exists():
        raise CosmicInputError(
            f"{where}: image file not found; check the image path/folder in the sample sheet"
        )
    if p.is_dir():
        raise CosmicInputError(f"{where}: is a directory, expected a TIFF file")
    if p.stat().st_size == 0:
        raise CosmicInputError(f"{where}: file is empty (0 bytes); re-copy or re-export the image")
    return p


def _read_tiff(p: Path, where: str) -> tuple[np.ndarray, str, list[str] | None]:
    """Pixels, axis letters and OME channel names (or None) of the file's first series."""
    try:
        with tifffile.TiffFile(p) as tif:
            if not tif.series:
                raise ValueError("no image series in file")
            series = tif.series[0]
            _check_truncated(tif, p)
            data = series.asarray()
            file_axes = series.axes
            names = _ome_channel_names(tif)
    except CosmicInputError:
        raise
    except Exception as exc:  # tifffile raises many kinds (TiffFileError, ValueError, struct.error...)
        raise CosmicInputError(
            f"{where}: not a readable TIFF (corrupt or truncated?): {type(exc).__name__}: {exc}. "
            "Re-copy the file or re-export it as TIFF/OME-TIFF"
        ) from exc
    return data, file_axes, names


def _check_pixels(data: np.ndarray, file_axes: str, where: str) -> None:
    """Raise for empty images, non-numeric pixel types and too many dimensions."""
    if data.size == 0:
        raise CosmicInputError(f"{where}: image is empty (shape {data.shape}); re-export the image")
    if data.dtype.kind == "c" or data.dtype.kind not in "buif":
        raise CosmicInputError(
            f"{where}: unsupported pixel type {data.dtype}; expected uint8/uint16/int/float"
        )
    if data.ndim < 2 or (data.ndim > 4 and sum(n > 1 for n in data.shape) > 4):
        raise CosmicInputError(
            f"{where}: unexpected number of dimensions {data.ndim} (shape {data.shape}, axes "
            f"'{file_axes}'); expected a 2-D image (YX), a multi-channel image (CYX/YXC) or a "
            "z-stack (ZYX/ZCYX/CZYX). Time series must be split into one file per time point"
        )


def _to_zcyx(data: np.ndarray, axes: str, where: str) -> tuple[np.ndarray, str]:
    """Transpose to Z x C x Y x X (adding missing Z and C axes); also return the resolved axes."""
    try:
        data, ax = _normalise_axes(data, axes)
        if "T" in ax:
            raise ValueError("time series are not supported; write one file per time point")
        order = [a for a in "ZCYX" if a in ax]
        data = np.transpose(data, [ax.index(a) for a in order])
        if "C" not in order:
            data = data[..., np.newaxis, :, :] if "Z" in order else data[np.newaxis]
        if "Z" not in order:
            data = data[np.newaxis]
    except ValueError as exc:
        raise CosmicInputError(
            f"{where}: unexpected number of dimensions or axis order ({exc}); expected YX, CYX, "
            "YXC, ZYX, ZCYX or CZYX. Pass the axis letters explicitly (axes=...) or save as OME-TIFF"
        ) from exc
    return data, ax


def _channel_names(names: list[str] | None, n_channels: int) -> list[str]:
    """The file's channel names, ``ch<i>`` where they are missing or do not match the channels."""
    if not names or len(names) != n_channels:
        names = [f"ch{i}" for i in range(n_channels)]
    return [str(n) if n else f"ch{i}" for i, n in enumerate(names)]


def _check_dna(dna: np.ndarray, name: str, where: str) -> None:
    """Raise when the DNA channel has non-finite pixels or is constant."""
    if not np.all(np.isfinite(dna)):
        raise CosmicInputError(
            f"{where}: DNA channel '{name}' has {int((~np.isfinite(dna)).sum())} "
            "NaN/inf pixels; fix or re-export the image"
        )
    lo, hi = float(dna.min()), float(dna.max())
    if lo == hi:
        raise CosmicInputError(
            f"{where}: DNA channel '{name}' is constant (every pixel = {lo:g}); the "
            "image is blank or saturated. Check the acquisition, the file, or dna_channel"
        )


def read_image(
    path,
    dna_channel: int | str = 0,
    z_projection: str = "max",
    sample: str | None = None,
    axes: str | None = None,
) -> ImageData:
    """Read a TIFF/OME-TIFF as float32 C x Y x X.

    Parameters
    ----------
    path : the image file.
    dna_channel : index or name (OME channel name, or ``"ch<i>"``) of the DNA-stain channel.
    z_projection : ``"max"`` (maximum projection), ``"best_focus"`` (the plane whose DNA
        channel has the highest variance of the Laplacian) or ``"mean"``.
    sample : sample name, only used in error messages.
    axes : axis letters (e.g. ``"ZCYX"``) overriding metadata and guessing.
    """
    where = describe(path, sample)
    p = _check_request(path, z_projection, where)
    data, file_axes, names = _read_tiff(p, where)
    _check_pixels(data, file_axes, where)
    data, ax = _to_zcyx(data, axes or file_axes, where)
    names = _channel_names(names, data.shape[1])
    dna_index = resolve_channel(dna_channel, names, where)

    if data.shape[-1] == 0 or data.shape[-2] == 0:
        raise CosmicInputError(f"{where}: image is empty (shape {data.shape})")
    pixels = project_z(data, z_projection, dna_index).astype(np.float32, copy=False)
    pixels = np.ascontiguousarray(pixels)
    _check_dna(pixels[dna_index], names[dna_index], where)
    return ImageData(
        pixels=pixels, channel_names=names, dna_index=dna_index, path=str(path), source_axes=ax
    )


def resolve_channel(dna_channel, names: list[str], where: str = "input") -> int:
    """Turn a channel index or name into an index, with a clear error."""
    n = len(names)
    if isinstance(dna_channel, (bool, np.bool_)):
        raise CosmicInputError(f"{where}: dna_channel must be an integer index or a channel name")
    if isinstance(dna_channel, (int, np.integer)):
        idx = int(dna_channel)
        if not -n <= idx < n:
            raise CosmicInputError(
                f"{where}: dna_channel {idx} is out of range: the image has {n} channel(s) "
                f"({', '.join(names)}); set dna_channel to 0..{n - 1} or to a channel name"
            )
        return idx % n
    if isinstance(dna_channel, str):
        if dna_channel in names:
            return names.index(dna_channel)
        lowered = [x.lower() for x in names]
        if dna_channel.lower() in lowered:
            return lowered.index(dna_channel.lower())
        if dna_channel.strip().lstrip("-").isdigit():
            return resolve_channel(int(dna_channel), names, where)
        raise CosmicInputError(
            f"{where}: unknown channel name '{dna_channel}'; available channels: "
            f"{', '.join(repr(x) for x in names)}. Set dna_channel to one of them or to an index"
        )
    raise CosmicInputError(
        f"{where}: dna_channel must be an integer index or a channel name, got {dna_channel!r}"
    )


def crop_dna_channel(dna_channel, first_image=None) -> int:
    """Index of the DNA channel inside the crop banks, which hold the channels in the order of the
    cohort's first image (see :func:`channel_order`).

    ``dna_channel``: the ``imaging.dna_channel`` setting (an index, or a channel name resolved
    on ``first_image``'s metadata; 0 when there is no image to resolve it on).
    """
    if isinstance(dna_channel, (int, np.integer)):
        return int(dna_channel)
    if first_image:
        return resolve_channel(dna_channel, file_channel_names(first_image)[0], describe(first_image))
    return 0


def file_channel_names(path, axes: str | None = None) -> tuple[list[str], bool]:
    """The channel names :func:`read_image` gives ``path``, read from the file's metadata only (no
    pixel data), and whether they are the file's own (OME channel names) rather than ``ch<i>``."""
    where = describe(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image series in file")
            shape, file_axes = tuple(tif.series[0].shape), tif.series[0].axes
            names = _ome_channel_names(tif)
        shape, ax = _resolve_axes(shape, axes or file_axes)
    except Exception as exc:  # tifffile raises many kinds; _resolve_axes raises ValueError
        raise CosmicInputError(f"{where}: cannot read the channels from the TIFF metadata "
                               f"({type(exc).__name__}: {exc})") from exc
    n_channels = shape[ax.index("C")] if "C" in ax else 1
    names = _channel_names(names, n_channels)
    return names, not _unnamed(names)


def _unnamed(names: list[str]) -> bool:
    """True for placeholder names: ``ch<i>`` (none in the file) or OME's default IDs ``Channel:0:<i>``."""
    return all(re.fullmatch(r"ch\d+|Channel:\d+:\d+", n) for n in names)


def _readable(path) -> bool:
    return bool(path) and Path(path).is_file() and Path(path).stat().st_size > 0


def channel_order(first_image) -> list[str] | None:
    """The channel order of every crop bank: the OME channel names of the cohort's first image.

    None when that image has no channel names (plain TIFF: crops keep each image's index order)
    or is absent or unreadable (its segment job reports that).
    """
    if not _readable(first_image):
        return None
    try:
        names, named = file_channel_names(first_image)
    except CosmicInputError:
        return None
    return names if named else None


def check_dna_channel(dna_channel, first_image) -> None:
    """Parse-time check of an ``imaging.dna_channel`` name on the first image's metadata.

    Does nothing for an index, or when the image is absent (demo data not generated yet), empty
    or unreadable (its segment job reports that).
    """
    if not isinstance(dna_channel, str) or not _readable(first_image):
        return
    try:
        names, _ = file_channel_names(first_image)
    except CosmicInputError:
        return
    try:
        resolve_channel(dna_channel, names, describe(first_image))
    except CosmicInputError:
        raise CosmicInputError(
            f"imaging.dna_channel '{dna_channel}' is not a channel of '{first_image}' (the first "
            f"image of the cohort), which has the channels {', '.join(repr(n) for n in names)}. Set "
            f"imaging.dna_channel in the config to one of these names or to an index (0..{len(names) - 1})"
        ) from None


def _find_channel(name: str, names: list[str]) -> int | None:
    if name in names:
        return names.index(name)
    lowered = [n.lower() for n in names]
    return lowered.index(name.lower()) if lowered.count(name.lower()) == 1 else None


def order_channels(image: ImageData, channels, where: str = "input") -> ImageData:
    """``image`` with its channels in the order ``channels`` (names, matched exactly or ignoring
    case); channels not listed are dropped. Kept as is when ``channels`` is None or the image has
    no channel names (plain TIFF, or OME without names)."""
    if not channels or _unnamed(image.channel_names):
        return image
    have = ", ".join(repr(n) for n in image.channel_names)
    expected = ", ".join(repr(n) for n in channels)
    index = [_find_channel(name, image.channel_names) for name in channels]
    missing = [name for name, i in zip(channels, index) if i is None]
    if missing or image.dna_index not in index:
        lacks = ", ".join(repr(n) for n in missing) or repr(image.channel_names[image.dna_index])
        raise CosmicInputError(
            f"{where}: has the channels {have}, not {lacks}; the crop banks hold the channels of the "
            f"cohort's first image ({expected}) in that order, so every image needs them. Rename the "
            "channels in the file's OME metadata, or analyse images with other channels in another run"
        )
    dropped = [n for i, n in enumerate(image.channel_names) if i not in index]
    if dropped:
        log.warning("%s: channel(s) %s are not channels of the cohort's first image; left out of the "
                    "nuclei table and crops", where, ", ".join(dropped))
    return ImageData(pixels=np.ascontiguousarray(image.pixels[index]), channel_names=list(channels),
                     dna_index=index.index(image.dna_index), path=image.path, source_axes=image.source_axes)


def crop_banks_by_sample(crop_paths, samples) -> dict[str, str] | None:
    """sample -> ``crops.npy`` from a rule's crop inputs and sample list (same order); None when
    there are none or the two lists differ in length (then the crops are not used)."""
    crop_paths, samples = list(crop_paths or []), list(samples or [])
    if not crop_paths or len(crop_paths) != len(samples):
        return None
    return dict(zip(map(str, samples), map(str, crop_paths)))
