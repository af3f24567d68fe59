"""Rule `generate_split`: train the RNA -> nucleus generator on one split's cells, draw nuclei for its test cells."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys
from pathlib import Path

import torch

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.generate.run import run_generate_split
from cosmic.imageio import crop_banks_by_sample

torch.set_num_threads(max(1, snakemake.threads))  # more threads than cores is many times slower
summary = run_generate_split(
    snakemake.input.cohort,
    crop_banks_by_sample(snakemake.input.crops, snakemake.params.samples),
    snakemake.params.cosmic,
    snakemake.params.generate,
    int(snakemake.wildcards.split),
    Path(snakemake.output.model).parent,
    snakemake.output.generated,
    progress=False,
)
print(summary, file=sys.stderr)
