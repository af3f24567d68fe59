"""Rule `generate_figures`: the RNA -> nucleus generator's figures for split 0 (test cells only)."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

import torch

from cosmic.generate.run import run_generate_figures
from cosmic.imageio import crop_banks_by_sample, crop_dna_channel
from cosmic.layout import GENERATE_FIGURES

torch.set_num_threads(max(1, snakemake.threads))
run_generate_figures(
    snakemake.input.cohort,
    crop_banks_by_sample(snakemake.input.crops, snakemake.params.samples),
    snakemake.params.cosmic,
    snakemake.input.model,
    snakemake.input.generated,
    snakemake.input.cycle_cells,
    crop_dna_channel(snakemake.params.dna_channel, snakemake.input.get("first_image")),
    {name: snakemake.output[name] for name in GENERATE_FIGURES},
)
