"""The generator's driver: every sample's files, then the ground truth and the oracle ceilings.

All random draws of the data come from one generator seeded with ``settings.seed``, in a fixed
order (gene table; then per sample: states, capture, fields of view, barcodes, counts, pairing
jitter), so the same settings give byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..atomic import atomic_path, write_json
from .expression import build_gene_table, random_barcodes, sample_counts, write_10x_mtx
from .oracle import oracle_ceilings, workflow_measure
from .render import compose_field, write_mask, write_ome_tiff
from .settings import DemoSettings, image_names, sample_paths, sample_sheet
from .states import draw_cell_states, morphology_traits

TRUE_NUCLEUS_COLUMNS = ("true_label", "centroid_y", "centroid_x", "true_area", "n_micronuclei")


def _draw_sample_nuclei(settings: DemoSettings, sample: str, treatment: str, images: list[str],
                        rng: np.random.Generator) -> pd.DataFrame:
    """Latent states of one sample's nuclei, their field of view, and which are captured as cells."""
    n_nuclei = settings.nuclei_per_sample()
    states = draw_cell_states(rng, sample, treatment, n_nuclei, settings.median_library_size)
    states["image"] = np.repeat(images, settings.nuclei_per_image)[:n_nuclei]
    captured = np.zeros(n_nuclei, bool)
    captured[rng.permutation(n_nuclei)[: settings.cells_per_sample]] = True
    states["captured"] = captured
    return states


def _write_fields(states: pd.DataFrame, images: list[str], paths: dict, settings: DemoSettings, sample: str,
                  rng: np.random.Generator, progress: bool) -> None:
    """Compose and write every field of view and its true mask; add :data:`TRUE_NUCLEUS_COLUMNS` to ``states``."""
    columns = {k: [] for k in TRUE_NUCLEUS_COLUMNS}
    for image in tqdm(images, desc=f"demo {sample}: images", disable=not progress):
        in_field = states["image"] == image
        pixels, labels, records = compose_field(states[in_field], rng, settings.image_size,
                                                settings.touching_fraction)
        write_ome_tiff(paths["images"] / f"{image}.ome.tif", pixels,
                       uid=f"cosmic-demo/{settings.seed}/{sample}/{image}")
        write_mask(paths["truth_masks"] / f"{image}.tif", labels)
        for key, values in zip(columns, zip(*records)):
            columns[key].extend(values)
    for key, values in columns.items():
        states[key] = values


def _write_pairing(cells: pd.DataFrame, barcodes: list[str], path: Path, rng: np.random.Generator) -> None:
    """IRIS records where each barcoded cell sits; the position is measured, hence jittered."""
    pairing = pd.DataFrame({
        "barcode": barcodes,
        "image": cells["image"].to_numpy(),
        "y": cells["centroid_y"].to_numpy() + rng.normal(0, 1.0, len(cells)),
        "x": cells["centroid_x"].to_numpy() + rng.normal(0, 1.0, len(cells)),
    })
    with atomic_path(path) as tmp:
        pairing.to_csv(tmp, sep="\t", index=False, float_format="%.2f")


def _write_annotations(cells: pd.DataFrame, barcodes: list[str], path: Path) -> None:
    """The response an experiment records per treated cell (e.g. a viability or proliferation
    reporter read after treatment); untreated cells have none."""
    annotations = pd.DataFrame({
        "barcode": barcodes,
        "response": np.where(cells["treatment"].to_numpy() == "control", "untreated",
                             cells["response"].to_numpy()),
    })
    with atomic_path(path) as tmp:
        annotations.to_csv(tmp, sep="\t", index=False)


def _generate_sample(settings: DemoSettings, sample: str, treatment: str, images: list[str], genes: pd.DataFrame,
                     outdir: Path, rng: np.random.Generator, progress: bool) -> pd.DataFrame:
    """Write one sample's images, true masks, counts, pairing table and annotations; return its truth."""
    paths = sample_paths(outdir, sample)
    states = _draw_sample_nuclei(settings, sample, treatment, images, rng)
    _write_fields(states, images, paths, settings, sample, rng, progress)
    captured = states["captured"].to_numpy()
    barcodes = random_barcodes(rng, settings.cells_per_sample)
    states["barcode"] = None
    states.loc[captured, "barcode"] = barcodes
    cells = states[captured]
    counts = sample_counts(cells, genes, rng)
    write_10x_mtx(paths["counts"], counts, barcodes, genes)
    _write_pairing(cells, barcodes, paths["pairing"], rng)
    _write_annotations(cells, barcodes, paths["annotations"])
    return states


def _write_tsv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def generate(settings: DemoSettings, outdir, measure=workflow_measure, progress: bool = True) -> dict:
    """Generate the whole demo dataset under ``outdir``; return the oracle summary.

    Writes per sample (see ``sample_paths``) images, true masks, a 10x matrix folder, a
    pairing table and per-cell annotations (the measured response of treated cells); and, shared:
    ``samples.tsv``, ``ground_truth.tsv``, ``genes.tsv``, ``morphology_oracle.tsv``,
    ``morphology_traits.tsv`` and ``oracle.json``.
    """
    outdir = Path(outdir)
    rng = np.random.default_rng(settings.seed)
    genes = build_gene_table(rng)
    names = image_names(settings)
    truth = pd.concat([_generate_sample(settings, sample, treatment, names[sample], genes, outdir, rng, progress)
                       for sample, treatment in settings.samples.items()], ignore_index=True)
    truth.insert(0, "nucleus_uid", truth["sample"] + ":" + truth["image"] + ":" + truth["true_label"].astype(str))

    morph, summary = oracle_ceilings(truth, genes, settings.seed, settings.oracle_replicates,
                                     settings.median_library_size, measure)
    _write_tsv(truth, outdir / "ground_truth.tsv")
    _write_tsv(genes, outdir / "genes.tsv")
    _write_tsv(morph, outdir / "morphology_oracle.tsv")
    _write_tsv(morphology_traits(), outdir / "morphology_traits.tsv")
    write_json(outdir / "oracle.json", summary)
    _write_tsv(sample_sheet(settings, outdir), outdir / "samples.tsv")
    return summary
