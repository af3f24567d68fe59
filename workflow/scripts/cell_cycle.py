"""Rule `cell_cycle`: RNA phase and position, morphology calls, their agreement, figures."""

import _checkout  # noqa: F401  (this checkout's cosmic package, not an installed copy)
import sys
from pathlib import Path

from cosmic.logs import log_to_file

log_to_file(snakemake.log[0])

from cosmic.cell_cycle import run_cell_cycle
from cosmic.imageio import crop_banks_by_sample, crop_dna_channel

crop_paths = list(snakemake.input.get("crops", []) or [])
samples = list(snakemake.params.get("samples", []) or [])
crops = crop_banks_by_sample(crop_paths, samples)
if crop_paths and crops is None:
    print(f"cell_cycle: {len(crop_paths)} crop banks for {len(samples)} samples; not using crops", file=sys.stderr)

# declared by the rule only when COSMIC renders nuclei (an empty input otherwise)
generated_images = snakemake.input.get("generated_images") or None
dna_channel = crop_dna_channel(snakemake.params.dna_channel, snakemake.params.get("first_image"))

summary = run_cell_cycle(
    snakemake.input.cohort,
    snakemake.input.get("predictions"),
    Path(snakemake.output.summary).parent,
    params=snakemake.params.cell_cycle,
    truth_dir=snakemake.params.get("truth"),
    crops=crops,
    generated_images=generated_images,
    dna_channel=dna_channel,
)
print({k: summary[k] for k in ("n_cells", "samples", "nuclei_strip")}, file=sys.stderr)
