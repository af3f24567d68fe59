# Configuration, validation and input functions shared by all rule files.
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import min_version, validate

min_version("8.0")

# The package holding all logic lives next to the rule scripts. Rule scripts find it
# because Snakemake puts a local script's folder on sys.path; the Snakefile needs it too.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from cosmic import config as cosmic_config
from cosmic import demo as cosmic_demo
from cosmic import imageio as cosmic_imageio
from cosmic import layout
from cosmic import resources as cosmic_resources
from cosmic.crossmodal.params import split_config
from cosmic.crossmodal.representation import for_workflow
from cosmic.errors import CosmicInputError
from cosmic.snakemake_compat import build_group_jobs_afresh
from snakemake.dag import DAG

# group jobs (segment on SLURM) are rebuilt from scratch whenever the DAG is re-planned: see
# cosmic/snakemake_compat.py for the Snakemake bug this avoids
build_group_jobs_afresh(DAG)


def _validate_or_explain(data, schema, explain):
    try:
        validate(data, schema)
    except Exception as exc:
        error = cosmic_config.find_validation_error(exc)
        if error is None:
            raise
        raise CosmicInputError(explain(error)) from None


_validate_or_explain(
    config,
    "../schemas/config.schema.yaml",
    lambda e: cosmic_config.explain_config_error(e, "the configuration"),
)


def _canonical(value):
    """Sort mapping keys, so reordering a config file does not look like a parameter change."""
    if isinstance(value, dict):
        return {key: _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


for _key in list(config):
    config[_key] = _canonical(config[_key])

RESULTS = config["results"].rstrip("/")
DEMO = config["demo"]
DEMO_DIR = f"{RESULTS}/demo"

if DEMO:
    DEMO_SETTINGS = cosmic_demo.DemoSettings.from_config(config["demo_dataset"])
    SAMPLES = cosmic_demo.sample_sheet(DEMO_SETTINGS, DEMO_DIR).set_index(
        "sample", drop=False
    )
    IMAGES = {
        sample: {name: f"{DEMO_DIR}/{sample}/images/{name}.ome.tif" for name in names}
        for sample, names in cosmic_demo.image_names(DEMO_SETTINGS).items()
    }
    MASKS = {}
else:
    SAMPLES = cosmic_config.read_sample_sheet(config["samples"])
    for _row, (_sample, _record) in enumerate(SAMPLES.iterrows()):
        _validate_or_explain(
            SAMPLES.iloc[[_row]].copy(),
            "../schemas/samples.schema.yaml",
            lambda e: cosmic_config.explain_sample_error(
                e, config["samples"], _row, _sample
            ),
        )
    validate(SAMPLES, "../schemas/samples.schema.yaml")  # fills defaults
    cosmic_config.check_sample_inputs(SAMPLES)
    IMAGES = {
        sample: (
            {}
            if cosmic_config.has_value(row, "morphology")
            else cosmic_config.resolve_images(sample, row["images"])
        )
        for sample, row in SAMPLES.iterrows()
    }
    # Label masks made elsewhere (sample-sheet column `masks`): imported instead of segmenting.
    MASKS = {
        sample: cosmic_config.resolve_masks(sample, row["masks"], IMAGES[sample])
        for sample, row in SAMPLES.iterrows()
        if cosmic_config.has_value(row, "masks")
    }

# The cohort's first image: channel names are resolved on it (metadata only).
FIRST_IMAGE = next(
    (path for images in IMAGES.values() for path in images.values()), None
)
# Crop banks and per-channel columns hold the channels in the first image's order, matched by
# name in every image (None: no channel names, index order). Known before the demo data exist.
CHANNEL_ORDER = (
    list(cosmic_demo.CHANNEL_NAMES)
    if DEMO
    else cosmic_imageio.channel_order(FIRST_IMAGE)
)
# A wrong imaging.dna_channel name stops `snakemake -n` (skipped while the image is absent).
cosmic_imageio.check_dna_channel(config["imaging"]["dna_channel"], FIRST_IMAGE)

# Samples given as precomputed morphology tables skip segmentation, nuclei and pretraining.
MORPHOLOGY_TABLES = (not DEMO) and cosmic_config.morphology_mode(SAMPLES)

# segmentation.nucleus_diameter: auto segments every image of a sample with one diameter: the run's
# reference (measured on up to 16 images of the first segmented sample) unless the sample's own
# nuclei are more than 25 % off it (another magnification); so a treatment that changes nuclear
# size does not change the segmentation settings. `per_image` measures it on each image instead.
REFERENCE_IMAGES = cosmic_config.reference_images(
    {sample: IMAGES[sample] for sample in SAMPLES.index if sample not in MASKS}
)
MEASURE_REFERENCE_DIAMETER = (
    config["segmentation"]["nucleus_diameter"] == "auto" and len(REFERENCE_IMAGES) > 0
)
# The morphology representation COSMIC models: images are embedded by the foundation model, so
# `auto` is X_fm with images and X_morph with morphology tables; `fm` without images is an error.
COSMIC_REPRESENTATION = for_workflow(
    config["cosmic"]["representation"], has_images=not MORPHOLOGY_TABLES
)


wildcard_constraints:
    split=r"\d+",
    sample="|".join(SAMPLES.index) if len(SAMPLES) else "[A-Za-z0-9_-]+",
    image="[^/]+",


def image_path(wildcards):
    return IMAGES[wildcards.sample][wildcards.image]


def segment_inputs(wildcards):
    """The image; and the sample sheet's mask for it (imported, not segmented), or else its
    own rows of the pairing table, whose positions split merged nuclei (if enabled)."""
    inputs = {"image": image_path(wildcards)}
    if wildcards.sample in MASKS:
        inputs["mask"] = MASKS[wildcards.sample][wildcards.image]
        return inputs
    if config["pairing"]["split_merged_nuclei"]:
        folder = checkpoints.pairing_by_image.get(sample=wildcards.sample).output.folder
        inputs["positions"] = f"{folder}/{wildcards.image}.tsv"
    diameter = reference_diameter_input(wildcards)
    if diameter:
        inputs["diameter"] = diameter
    return inputs


def pairing_table(wildcards):
    """The sample's pairing table (sample-sheet column `pairing`)."""
    return SAMPLES.loc[wildcards.sample, "pairing"]


def diameter_file(sample):
    return f"{RESULTS}/segmentation/{sample}/nucleus_diameter.json"


def reference_diameter_input(wildcards):
    """The sample's nucleus-diameter file when segmentation.nucleus_diameter is auto."""
    if MEASURE_REFERENCE_DIAMETER and wildcards.sample not in MASKS:
        return diameter_file(wildcards.sample)
    return []


def nucleus_diameter_inputs(wildcards):
    """The run's reference images and (up to 16 of) the sample's own images."""
    return {
        "reference": REFERENCE_IMAGES,
        "images": cosmic_config.reference_images(
            {wildcards.sample: IMAGES[wildcards.sample]}
        ),
    }


def segmentation_params(wildcards):
    """The segmentation settings; none for imported masks (a change does not redo them)."""
    return None if wildcards.sample in MASKS else config["segmentation"]


def mask_path(sample, image):
    return f"{RESULTS}/segmentation/{sample}/{image}.mask.tif"


def sample_images(wildcards):
    return list(IMAGES[wildcards.sample].values())


def sample_masks(wildcards):
    return [mask_path(wildcards.sample, image) for image in IMAGES[wildcards.sample]]


def all_masks(wildcards=None):
    return [
        mask_path(sample, image)
        for sample, images in IMAGES.items()
        for image in images
    ]


def demo_truth_masks(wildcards=None):
    return [
        f"{DEMO_DIR}/{sample}/truth_masks/{image}.tif"
        for sample, images in IMAGES.items()
        for image in images
    ]


def sample_value(sample, column, default=None):
    """A sample-sheet value, or the default when the column is absent or empty."""
    value = SAMPLES.loc[sample].get(column, default)
    return default if pd.isna(value) else value


def sample_metadata(sample):
    """Sample-sheet metadata carried into the paired AnnData's obs."""
    return {
        column: SAMPLES.loc[sample, column]
        for column in SAMPLES.columns
        if column in ("condition", "cell_line", "treatment", "response")
        or column.startswith("meta_")
        if not pd.isna(SAMPLES.loc[sample, column])
    }


def rna_inputs(wildcards):
    inputs = {"counts": SAMPLES.loc[wildcards.sample, "counts"]}
    embedding = sample_value(wildcards.sample, "embedding")
    if embedding:
        inputs["embedding"] = embedding
    return inputs


def pair_inputs(wildcards):
    """RNA of the sample plus either its nuclei (images route) or its morphology table."""
    sample = wildcards.sample
    inputs = {
        "rna": f"{RESULTS}/rna/{sample}.h5ad",
        "dropped": f"{RESULTS}/rna/{sample}.dropped_cells.tsv",
    }
    if MORPHOLOGY_TABLES:
        inputs["morphology"] = SAMPLES.loc[sample, "morphology"]
    else:
        inputs.update(
            nuclei=f"{RESULTS}/nuclei/{sample}/nuclei.parquet",
            embedding=f"{RESULTS}/nuclei/{sample}/embedding.npy",
            masks=sample_masks(wildcards),
            pairing=SAMPLES.loc[sample, "pairing"],
        )
    annotations = sample_value(sample, "annotations")
    if annotations:
        inputs["annotations"] = annotations
    return inputs


def cosmic_inputs(wildcards):
    """The paired cohort, the foundation model whose decoder renders generated nuclei, and
    (demo) the truth files the results are scored against."""
    inputs = {"cohort": f"{RESULTS}/paired/cohort.h5ad"}
    if COSMIC_DECODES_IMAGES:
        inputs["foundation"] = f"{RESULTS}/models/foundation/model.pt"
        # the encoder's last stages, fine-tuned with the expression head, see the crops
        if config["cosmic"]["finetune_blocks"] > 0:
            inputs["crops"] = crops_inputs()
    if DEMO:  # scored against the generator's truth and oracle ceilings
        inputs["truth"] = [
            f"{DEMO_DIR}/{name}"
            for name in (
                "ground_truth.tsv",
                "genes.tsv",
                "morphology_oracle.tsv",
                "oracle.json",
            )
        ]
    return inputs


def first_image_input():
    """The image a DNA channel *name* is resolved on (crop banks keep its channel order)."""
    if isinstance(config["imaging"]["dna_channel"], str) and FIRST_IMAGE:
        return {"first_image": FIRST_IMAGE}
    return {}


def cosmic_nuclei_figure_inputs(wildcards):
    """Predictions, their decoded images, the foundation model (renders the observed
    embedding), the crop banks (real nuclei), the image a channel name is read on."""
    inputs = {
        "predictions": f"{RESULTS}/cosmic/predictions.h5ad",
        "generated_images": GENERATED_IMAGES,
        "foundation": f"{RESULTS}/models/foundation/model.pt",
        "crops": crops_inputs(),
    }
    inputs.update(first_image_input())
    return inputs


# Repeated held-out evaluation (cosmic.evaluation.n_splits splits; split 0 is the cosmic rule's).
N_SPLITS = config["cosmic"]["evaluation"]["n_splits"]


def split_table(split):
    return f"{RESULTS}/cosmic/evaluation/splits/split_{split}.tsv"


def cosmic_split_inputs(wildcards):
    """The cohort; for split 0 the `cosmic` rule's model (same seed, same cells); when COSMIC
    renders nuclei, the foundation model and crop banks that score them as images."""
    inputs = {"cohort": f"{RESULTS}/paired/cohort.h5ad"}
    if int(wildcards.split) == 0:
        inputs["fitted"] = f"{RESULTS}/models/cosmic/model.pt"
    if COSMIC_DECODES_IMAGES:
        inputs["foundation"] = f"{RESULTS}/models/foundation/model.pt"
        inputs["crops"] = crops_inputs()
        inputs.update(first_image_input())
    if GENERATE_IMAGES:
        inputs["generated"] = generated_nuclei(wildcards.split)
    return inputs


# Report notebooks in workflow/notebooks/, in the order the index lists them.
REPORTS = ["qc", "cosmic", "cell_cycle", "drug_response"]
if not MORPHOLOGY_TABLES:
    REPORTS.insert(1, "foundation")

CELL_CYCLE_FIGURES = list(layout.CELL_CYCLE_FIGURES)
DRUG_RESPONSE_FIGURES = list(layout.DRUG_RESPONSE_FIGURES)

# COSMIC renders nuclei generated from RNA when it models the foundation embedding (images route).
COSMIC_DECODES_IMAGES = COSMIC_REPRESENTATION.decodes_images
GENERATED_IMAGES = (
    f"{RESULTS}/cosmic/{layout.GENERATED_IMAGES}" if COSMIC_DECODES_IMAGES else None
)
# The pixel-space generator (cosmic.generate) runs in every split when nuclei are rendered.
GENERATE_IMAGES = COSMIC_DECODES_IMAGES and config["generate"]["enabled"]


GENERATE_FIGURE_DIR = f"{RESULTS}/cosmic/generate/figures"


def generate_figures_inputs(wildcards):
    """Split 0's generator and nuclei, the cohort, crop banks and the RNA cell-cycle positions."""
    inputs = {
        "cohort": f"{RESULTS}/paired/cohort.h5ad",
        "crops": crops_inputs(),
        "model": f"{RESULTS}/models/generate/split_0/model.pt",
        "generated": generated_nuclei(0),
        "cycle_cells": f"{RESULTS}/analysis/cell_cycle/cells.tsv",
    }
    inputs.update(first_image_input())
    return inputs


def generated_nuclei(split):
    """The generator's nuclei for the test cells of one evaluation split."""
    return f"{RESULTS}/cosmic/generate/split_{split}.npz"


COSMIC_FIGURE_DIR = f"{RESULTS}/cosmic/figures"
# Captions of the `cosmic` rule's figures (the PNGs are declared one by one, as report items).
COSMIC_CAPTIONS = [
    path
    for path in layout.figure_files(COSMIC_FIGURE_DIR, layout.COSMIC_FIGURES)
    if path.endswith(".txt")
]
# Drawn by `cosmic_nuclei_figure` (PNG and caption); none when COSMIC decodes no images.
GENERATED_NUCLEI_FILES = (
    layout.figure_files(COSMIC_FIGURE_DIR, [layout.GENERATED_NUCLEI_FIGURE])
    if COSMIC_DECODES_IMAGES
    else []
)


def crops_inputs(wildcards=None):
    """Crop banks of every sample (none when morphology comes from tables)."""
    if MORPHOLOGY_TABLES:
        return []
    return [f"{RESULTS}/nuclei/{sample}/crops.npy" for sample in SAMPLES.index]


def report_inputs(wildcards):
    """The notebook and every file it reads."""
    name = wildcards.name
    notebook = str(Path(workflow.basedir) / "workflow" / "notebooks" / f"{name}.ipynb")
    data = []
    if name == "qc":
        for sample in SAMPLES.index:
            data += [
                f"{RESULTS}/rna/{sample}.qc.png",
                f"{RESULTS}/rna/{sample}.dropped_cells.tsv",
                f"{RESULTS}/paired/{sample}.pairing_qc.tsv",
            ]
            if not MORPHOLOGY_TABLES:
                data.append(f"{RESULTS}/nuclei/{sample}/nuclei.parquet")
        data += all_masks() + [f"{RESULTS}/paired/pairing_summary.tsv"]
        if DEMO:
            data += [
                f"{RESULTS}/qc/segmentation_quality.tsv",
                f"{RESULTS}/qc/pairing_accuracy.tsv",
            ]
    elif name == "foundation":
        data += [
            f"{RESULTS}/models/foundation/model.pt",
            f"{RESULTS}/models/foundation/config.json",
        ]
        data += [f"{RESULTS}/nuclei/{sample}/embedding.npy" for sample in SAMPLES.index]
        if DEMO:
            data += [
                f"{RESULTS}/qc/foundation_probes.tsv",
                f"{RESULTS}/qc/foundation_reconstructions.png",
                f"{RESULTS}/qc/foundation_umap.png",
            ]
    elif name == "cosmic":
        data += [
            f"{RESULTS}/cosmic/metrics.json",
            f"{RESULTS}/cosmic/variance_decomposition.tsv",
            f"{RESULTS}/cosmic/predictions.h5ad",
            f"{RESULTS}/cosmic/evaluation/summary.tsv",
            f"{RESULTS}/cosmic/evaluation/paired.tsv",
            f"{RESULTS}/cosmic/evaluation/figures/paired_differences.png",
        ]
        data += GENERATED_NUCLEI_FILES
        if GENERATE_IMAGES:
            data += layout.figure_files(GENERATE_FIGURE_DIR, layout.GENERATE_FIGURES)
    elif name == "cell_cycle":
        data += [
            f"{RESULTS}/analysis/cell_cycle/summary.json",
            f"{RESULTS}/analysis/cell_cycle/position_agreement.tsv",
        ]
    elif name == "drug_response":
        data.append(f"{RESULTS}/analysis/drug_response/summary.json")
    return {"notebook": notebook, "data": data}


def report_parameters(wildcards):
    """Values injected into the notebook's `parameters` cell."""
    return {
        "results": RESULTS,
        "samples": list(SAMPLES.index),
        "images": {sample: dict(images) for sample, images in IMAGES.items()},
        "demo": bool(DEMO),
        "dna_channel": config["imaging"]["dna_channel"],
        "morphology_tables": bool(MORPHOLOGY_TABLES),
    }


def demo_outputs():
    """Every file the demo generator writes (empty when running on user data)."""
    if not DEMO:
        return []
    files = [
        f"{DEMO_DIR}/{name}"
        for name in (
            "samples.tsv",
            "ground_truth.tsv",
            "genes.tsv",
            "morphology_oracle.tsv",
            "morphology_traits.tsv",
            "oracle.json",
        )
    ]
    for sample, images in IMAGES.items():
        files += list(images.values())
        files += [f"{DEMO_DIR}/{sample}/truth_masks/{name}.tif" for name in images]
        files += [
            f"{DEMO_DIR}/{sample}/pairing.tsv",
            f"{DEMO_DIR}/{sample}/annotations.tsv",
        ]
    return files


def all_outputs():
    """Final targets of every stage that exists."""
    targets = demo_outputs()
    for sample in SAMPLES.index:
        targets.append(f"{RESULTS}/rna/{sample}.qc.png")
        if not MORPHOLOGY_TABLES:
            targets += [
                f"{RESULTS}/nuclei/{sample}/nuclei.parquet",
                f"{RESULTS}/nuclei/{sample}/crops.npy",
            ]
    targets += [
        f"{RESULTS}/paired/cohort.h5ad",
        f"{RESULTS}/paired/pairing_summary.tsv",
        f"{RESULTS}/cosmic/metrics.json",
        f"{RESULTS}/cosmic/evaluation/summary.tsv",
        f"{RESULTS}/cosmic/evaluation/paired.tsv",
        *GENERATED_NUCLEI_FILES,
        f"{RESULTS}/analysis/cell_cycle/summary.json",
        f"{RESULTS}/analysis/drug_response/summary.json",
        f"{RESULTS}/reports/index.html",
    ]
    if DEMO:
        targets += [
            f"{RESULTS}/qc/segmentation_quality.tsv",
            f"{RESULTS}/qc/pairing_accuracy.tsv",
            f"{RESULTS}/qc/foundation_probes.tsv",
        ]
    return targets
