"""The pairing table split by image: the recorded positions each segmentation job needs.

Segmentation splits nuclei holding several recorded cell positions
(``pairing.split_merged_nuclei``), so each image's job needs that image's rows of the sample's
pairing table. Reading the whole table in every job costs seconds per image at 10^6 rows, and
a change to any row would redo every image. Instead the table is split once per sample into one
small file per image holding only its positions (``y``, ``x``, in table order); a file is
rewritten only when its content changes, so an edited row reruns only its own image's
segmentation (Snakemake compares modification times) and a renamed barcode reruns none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .errors import CosmicInputError
from .pairing import read_pairing_table

log = logging.getLogger(__name__)

POSITION_COLUMNS = ("y", "x")
SUFFIX = ".tsv"


def position_file(folder, image: str) -> Path:
    """The file holding image ``image``'s positions in ``folder``."""
    return Path(folder) / f"{image}{SUFFIX}"


def position_texts(table: pd.DataFrame, image_names) -> dict[str, str]:
    """Per image of ``image_names``: its rows' positions as TSV text (header only if none).

    Floats are written as Python's shortest round-trip repr, so they read back bit-identical
    (:func:`read_positions`)."""
    header = "\t".join(POSITION_COLUMNS) + "\n"
    ys = [repr(v) for v in table["y"].astype(float).tolist()]
    xs = [repr(v) for v in table["x"].astype(float).tolist()]
    lines = np.array([f"{y}\t{x}\n" for y, x in zip(ys, xs)], dtype=object)
    rows = table.groupby("image", sort=False).indices
    empty = np.empty(0, dtype=np.int64)
    return {name: header + "".join(lines[rows.get(name, empty)]) for name in image_names}


def write_if_changed(path, text: str) -> bool:
    """Write ``text`` to ``path`` (atomically) unless the file already holds exactly it;
    an unchanged file keeps its modification time. Returns whether it was written."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True


def split_by_image(table_path, folder, image_names, sample: str) -> dict[str, int]:
    """Write one position file per image of the sample into ``folder`` (only those whose
    content changed) and remove files of images no longer in the sample.

    Returns counts: ``written``, ``unchanged``, ``removed`` files, ``rows``, and
    ``rows_other_images`` (rows naming an image the sample does not have; `pair` reports them).
    """
    image_names = list(image_names)
    if not image_names:
        raise CosmicInputError(f"sample '{sample}': no images to split the pairing table '{table_path}' by.")
    table = read_pairing_table(table_path, sample=sample)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = sum(write_if_changed(position_file(folder, name), text)
                  for name, text in position_texts(table, image_names).items())
    keep = {position_file(folder, name).name for name in image_names}
    stale = [p for p in folder.glob(f"*{SUFFIX}") if p.name not in keep]
    for path in stale:
        path.unlink()
    other = int((~table["image"].isin(set(image_names))).sum())
    if other:
        log.warning("sample '%s': %d rows of pairing table '%s' name images the sample does not have "
                    "(e.g. %s); they pair to no nucleus", sample, other, table_path,
                    list(table.loc[~table["image"].isin(set(image_names)), "image"].unique()[:3]))
    return {"written": int(written), "unchanged": len(image_names) - int(written), "removed": len(stale),
            "rows": len(table), "rows_other_images": other}


def read_positions(path, sample: str | None = None, image: str | None = None) -> np.ndarray:
    """The (y, x) positions of one image's position file, as an (n, 2) float array."""
    try:
        table = pd.read_csv(path, sep="\t", float_precision="round_trip")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CosmicInputError(
            f"sample '{sample}', image '{image}': cannot read its pairing positions '{path}' ({exc}). "
            "Delete the file's folder to have it written again from the pairing table."
        ) from None
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise CosmicInputError(
            f"sample '{sample}', image '{image}': pairing positions '{path}' lack columns {missing}. "
            "Delete the file's folder to have it written again from the pairing table."
        )
    return table[list(POSITION_COLUMNS)].to_numpy(float).reshape(-1, 2)
