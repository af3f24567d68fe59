"""Rule `nuclei`: masks + images of one sample -> nuclei.parquet and crops.npy."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.nuclei import build_nuclei_outputs
from cosmic.segmentation_size import workflow_params

table = build_nuclei_outputs(
    snakemake.wildcards.sample,
    list(zip(snakemake.params.image_names, snakemake.input.images, snakemake.input.masks)),
    snakemake.output.table,
    snakemake.output.crops,
    seg_params=workflow_params(snakemake.params.segmentation, snakemake.input.get("diameter") or None),
    nuclei_params=snakemake.params.nuclei,
    dna_channel=snakemake.params.dna_channel,
    z_projection=snakemake.params.z_projection,
    channel_order=snakemake.params.channel_order,
)
print(f"{len(table)} nuclei, {int(table['qc_pass'].sum()) if len(table) else 0} pass QC", file=sys.stderr)
