"""Rule `cosmic_nuclei_figure`: held-out real nuclei beside the nuclei generated from their RNA."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
from functools import partial
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.crossmodal.figures import generated_nuclei_figure
from cosmic.foundation import decode_embeddings, load_model
from cosmic.imageio import crop_banks_by_sample, crop_dna_channel

generated_nuclei_figure(
    snakemake.input.predictions,
    snakemake.input.generated_images,
    Path(snakemake.output.figure).parent,
    crops=crop_banks_by_sample(snakemake.input.crops, snakemake.params.samples),
    dna_channel=crop_dna_channel(snakemake.params.dna_channel, snakemake.input.get("first_image")),
    decode_images=partial(decode_embeddings, load_model(snakemake.input.foundation)),
)
