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
from cosmic.errors import CosmicInputError


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
        sample: cosmic_config.resolve_images(sample, row["images"])
        for sample, row in SAMPLES.iterrows()
    }


wildcard_constraints:
    sample="|".join(SAMPLES.index) if len(SAMPLES) else "[A-Za-z0-9_-]+",
    image="[^/]+",


def image_path(wildcards):
    return IMAGES[wildcards.sample][wildcards.image]


def segment_inputs(wildcards):
    """The image, and the pairing table whose positions split merged nuclei (if enabled)."""
    inputs = {"image": image_path(wildcards)}
    if config["pairing"]["split_merged_nuclei"]:
        inputs["pairing"] = SAMPLES.loc[wildcards.sample, "pairing"]
    return inputs


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


def pairing_table(wildcards):
    return SAMPLES.loc[wildcards.sample, "pairing"]


def cosmic_inputs(wildcards):
    """The paired cohort, and the foundation model whose decoder renders generated nuclei."""
    inputs = {"cohort": f"{RESULTS}/paired/cohort.h5ad"}
    if config["cosmic"]["representation"] != "morph":
        inputs["foundation"] = f"{RESULTS}/models/foundation/model.pt"
    return inputs


REPORTS = ["qc"]


def report_inputs(wildcards):
    """The notebook and every file it reads."""
    notebook = str(
        Path(workflow.basedir) / "workflow" / "notebooks" / f"{wildcards.name}.ipynb"
    )
    data = []
    if wildcards.name == "qc":
        for sample in SAMPLES.index:
            data += [
                f"{RESULTS}/nuclei/{sample}/nuclei.parquet",
                f"{RESULTS}/rna/{sample}.qc.png",
                f"{RESULTS}/rna/{sample}.dropped_cells.tsv",
                f"{RESULTS}/paired/{sample}.pairing_qc.tsv",
            ]
        data += all_masks() + [f"{RESULTS}/paired/pairing_summary.tsv"]
        if DEMO:
            data += [
                f"{RESULTS}/qc/segmentation_quality.tsv",
                f"{RESULTS}/qc/pairing_accuracy.tsv",
            ]
    return {"notebook": notebook, "data": data}


def report_parameters(wildcards):
    """Values injected into the notebook's `parameters` cell."""
    return {
        "results": RESULTS,
        "samples": list(SAMPLES.index),
        "images": {sample: dict(images) for sample, images in IMAGES.items()},
        "demo": bool(DEMO),
        "dna_channel": config["imaging"]["dna_channel"],
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
        files += [f"{DEMO_DIR}/{sample}/pairing.tsv"]
    return files


def all_outputs():
    """Final targets of every stage that exists."""
    targets = demo_outputs()
    for sample in SAMPLES.index:
        targets += [
            f"{RESULTS}/nuclei/{sample}/nuclei.parquet",
            f"{RESULTS}/nuclei/{sample}/crops.npy",
            f"{RESULTS}/rna/{sample}.qc.png",
        ]
    targets += [
        f"{RESULTS}/paired/cohort.h5ad",
        f"{RESULTS}/paired/pairing_summary.tsv",
        f"{RESULTS}/reports/index.html",
        f"{RESULTS}/cosmic/metrics.json",
    ]
    if DEMO:
        targets += [
            f"{RESULTS}/qc/segmentation_quality.tsv",
            f"{RESULTS}/qc/pairing_accuracy.tsv",
            f"{RESULTS}/qc/foundation_probes.tsv",
        ]
    return targets
