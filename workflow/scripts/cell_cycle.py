"""Rule `cell_cycle`: RNA phase and position, morphology calls, their agreement, figures."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from cosmic.cell_cycle import run_cell_cycle

crop_paths = list(snakemake.input.get("crops", []) or [])
samples = list(snakemake.params.get("samples", []) or [])
crops = dict(zip(map(str, samples), crop_paths)) if crop_paths and len(crop_paths) == len(samples) else None
if crop_paths and crops is None:
    print(f"cell_cycle: {len(crop_paths)} crop banks for {len(samples)} samples; not using crops", file=sys.stderr)

# Crops keep the images' channel order: resolve a channel name on the first image.
dna_channel = snakemake.config.get("imaging", {}).get("dna_channel", 0)
if not isinstance(dna_channel, int):
    first_image = snakemake.params.get("first_image")
    if first_image:
        from cosmic.imageio import read_image

        dna_channel = read_image(first_image, dna_channel=dna_channel).dna_index
    else:
        dna_channel = 0

summary = run_cell_cycle(
    snakemake.input.cohort,
    snakemake.input.get("predictions"),
    Path(snakemake.output.summary).parent,
    params=snakemake.params.cell_cycle,
    truth_dir=snakemake.params.get("truth"),
    crops=crops,
    dna_channel=int(dna_channel),
)
print({k: summary[k] for k in ("n_cells", "samples", "nuclei_strip")}, file=sys.stderr)
