"""Segment a folder of images outside the workflow.

    python -m cosmic.segmentation IMAGES_DIR OUT_DIR [--diameter auto|N] [--dna-channel NAME|INDEX]

(``python -m cosmic.segmentation_cli`` is the same). Every ``*.tif`` / ``*.tiff`` /
``*.ome.tif(f)`` in IMAGES_DIR is read with :func:`cosmic.imageio.read_image`, its DNA channel
segmented with :func:`cosmic.segmentation.segment_nuclei`, and written to
``OUT_DIR/<image>.tif`` (uint16 labels, 0 = background; the diameter used is in the TIFF
description). ``OUT_DIR/qc.tsv`` has one row per image: the diameter used and where it came
from (``auto`` = measured on the image, ``config``, ``fallback``), the nuclei found, the
candidate objects and how many each filter removed, the warnings, and the error if the image
could not be read. The exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

QC_COLUMNS = ["image", "mask", "nucleus_diameter", "diameter_source", "nuclei", "candidates",
              "removed_specks", "removed_too_small", "removed_too_large", "removed_border",
              "split_at_positions", "seconds", "warnings", "error"]


def _diameter(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive number of pixels, got {text!r}")
    return value


def _channel(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cosmic.segmentation", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images_dir", type=Path, help="folder of TIFF / OME-TIFF images")
    ap.add_argument("out_dir", type=Path, help="folder for the <image>.tif label masks and qc.tsv")
    ap.add_argument("--diameter", type=_diameter, default=None, metavar="auto|N",
                    help="typical nucleus diameter in pixels, or 'auto' to measure it on every image "
                         "(default: the config's segmentation.nucleus_diameter, else auto)")
    ap.add_argument("--dna-channel", type=_channel, default=None, metavar="NAME|INDEX",
                    help="DNA channel: index or OME channel name (default: the config's "
                         "imaging.dna_channel, else 0)")
    ap.add_argument("--z-projection", choices=["max", "best_focus", "mean"], default=None)
    ap.add_argument("--config", type=Path, default=None,
                    help="a workflow config YAML: its segmentation block and imaging settings are used")
    return ap


def find_images(folder: Path) -> list[Path]:
    from .config import IMAGE_SUFFIXES

    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def segment_one(path: Path, out_dir: Path, params, dna_channel, z_projection) -> dict:
    """Segment one image file; return its QC row (errors and warnings recorded, not raised)."""
    from .config import image_name
    from .errors import CosmicInputError
    from .segmentation import segment_image_file

    mask = out_dir / f"{image_name(path)}.tif"
    row = {"image": path.name, "mask": mask.name}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            info = {}
            segment_image_file(path, mask, params, dna_channel=dna_channel, z_projection=z_projection,
                               info=info)
            row.update(info)
        except CosmicInputError as exc:
            row["error"] = str(exc)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    row["warnings"] = " | ".join(str(w.message) for w in caught)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return row


def _settings(args):
    """(SegmentationParams, dna_channel, z_projection) from the config file and the options."""
    from .segmentation import SegmentationParams

    config = {}
    if args.config is not None:
        import yaml

        config = yaml.safe_load(args.config.read_text()) or {}
    block = dict(config.get("segmentation") or {})
    if args.diameter is not None or "nucleus_diameter" not in block:
        block["nucleus_diameter"] = args.diameter if args.diameter is not None else "auto"
    imaging = config.get("imaging") or {}
    dna = args.dna_channel if args.dna_channel is not None else imaging.get("dna_channel", 0)
    z = args.z_projection or imaging.get("z_projection", "max")
    return SegmentationParams.from_config(block), dna, z


def main(argv=None) -> int:
    import pandas as pd

    from .atomic import atomic_path
    from .errors import CosmicInputError

    args = _parser().parse_args(argv)
    try:
        params, dna, z = _settings(args)
        if not args.images_dir.is_dir():
            raise CosmicInputError(f"{args.images_dir} is not a folder")
        if args.out_dir.resolve() == args.images_dir.resolve():
            raise CosmicInputError("OUT_DIR must differ from IMAGES_DIR (masks would overwrite the images)")
        images = find_images(args.images_dir)
        if not images:
            raise CosmicInputError(f"no .tif/.tiff/.ome.tif images in {args.images_dir}")
    except CosmicInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, path in enumerate(images, 1):
        row = segment_one(path, args.out_dir, params, dna, z)
        rows.append(row)
        what = row.get("error") or (f"{row['nuclei']} nuclei, diameter {row['nucleus_diameter']:.1f} px "
                                    f"({row['diameter_source']})")
        print(f"[{k}/{len(images)}] {path.name}: {what}", file=sys.stderr)
    table = pd.DataFrame(rows).reindex(columns=QC_COLUMNS)
    with atomic_path(args.out_dir / "qc.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    return 1 if table["error"].notna().any() else 0


if __name__ == "__main__":
    raise SystemExit(main())
